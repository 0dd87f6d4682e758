"""Interop with other libraries: Hugging Face ``transformers`` (:mod:`~recipes.interop.hf`, optional
extra ``hf``)."""
