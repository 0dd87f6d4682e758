"""Benchmarks that print ratios measured side by side in one run: every strategy's train step vs the
baseline (:mod:`~recipes.bench.step`, ``python -m recipes.bench``) and the dense strategies' routing
alone (:mod:`~recipes.bench.depth`), the memory-lean train step vs the plain one
(:mod:`~recipes.bench.lean`), our baseline vs Hugging Face's ``LlamaForCausalLM`` with the same
weights (:mod:`~recipes.bench.hf_vs_ours`), a patched Hugging Face Llama vs the unpatched one
(:mod:`~recipes.bench.hf_patch`); :mod:`~recipes.bench.measure`, :mod:`~recipes.bench.report` and
:mod:`~recipes.bench.counters` are their shared measuring, reporting and hardware-counter parts."""
