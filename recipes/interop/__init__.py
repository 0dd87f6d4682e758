"""Interop with other libraries: Hugging Face ``transformers`` (optional extra ``hf``) — our model
behind the ``PreTrainedModel`` interface (:mod:`~recipes.interop.hf`) and Llama-family checkpoints
converted to and from ``CausalLM`` (:mod:`~recipes.interop.convert`)."""
