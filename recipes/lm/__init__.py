"""The LM recipe: :class:`ModelConfig` (:mod:`~recipes.lm.config`), builders of the paper's sizes ×
strategies (:mod:`~recipes.lm.builders`), :class:`CausalLM` and its KV cache (:mod:`~recipes.lm.model`),
generation (:mod:`~recipes.lm.generate`) and the argument checks they share (:mod:`~recipes.lm.checks`).

Every other subpackage of :mod:`recipes` builds on this one; :mod:`recipes` re-exports its
user-facing names.
"""

from recipes.lm.builders import (
    SIZES,
    denseformer,
    hyperconnections,
    model_config,
    muddformer,
    resformer,
    satformer,
    transformer,
)
from recipes.lm.config import ModelConfig
from recipes.lm.generate import generate, sample
from recipes.lm.model import CausalLM, KVCache

__all__ = [
    "SIZES",
    "CausalLM",
    "KVCache",
    "ModelConfig",
    "denseformer",
    "generate",
    "hyperconnections",
    "model_config",
    "muddformer",
    "resformer",
    "sample",
    "satformer",
    "transformer",
]
