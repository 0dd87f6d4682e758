"""Command-line tools that are neither training nor evaluation: the parameter count of every builder
(:mod:`~recipes.tools.params`) and the GPU self-check (:mod:`~recipes.tools.doctor`: every fast path
on this machine's device against its reference)."""
