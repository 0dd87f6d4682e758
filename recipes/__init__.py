"""Complete causal language models built from :mod:`value_routing` and :mod:`blocks`.

Each subpackage is one concern; the package re-exports the user-facing names of the first:

- :mod:`recipes.lm` — the LM recipe itself: configuration, builders, the model, generation, checks;
- :mod:`recipes.data` — the embedded corpus, pre-tokenized shards, tokenizers;
- :mod:`recipes.train` — optimiser, schedule and train step shared by every loop; pretraining and
  checkpoints;
- :mod:`recipes.interop` — Hugging Face ``transformers`` wrappers;
- :mod:`recipes.eval` — MQAR, SATFormer gate analysis, the lm-evaluation-harness adapter;
- :mod:`recipes.experiments` — end-to-end comparisons of strategies: the CPU demo;
- :mod:`recipes.bench` — train-step and routing benchmarks;
- :mod:`recipes.tools` — command-line tools that are neither training nor evaluation.

Imports point down that list (a subpackage never imports one listed after it) and never circle.
"""

from recipes import lm as _lm
from recipes.lm import *  # noqa: F403 - the facade re-exports exactly recipes.lm's public names

__all__ = list(_lm.__all__)
