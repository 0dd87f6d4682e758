"""Builders returning configs: model sizes from the SATFormer paper × reuse strategies.

``python -m recipes.tools.params`` prints the parameter count of every size and strategy.
"""

from __future__ import annotations

from typing import Any

import torch

from recipes.config import ModelConfig
from value_routing.strategies import STRATEGIES

#: Architecture of each size (vocab 32000 unless stated; ``tiny`` is byte-level for CPU demos).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=512),
    "small": dict(d_model=768, n_layers=11, n_heads=12),
    "medium": dict(d_model=1024, n_layers=18, n_heads=16),
    "large": dict(d_model=1536, n_layers=19, n_heads=24),
    "xl": dict(d_model=2048, n_layers=24, n_heads=16),
}


def model_config(size: str = "small", strategy: str = "baseline", **overrides: Any) -> ModelConfig:
    """Config of ``size`` running ``strategy``; ``overrides`` replace any ModelConfig field."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {strategy!r}")
    return ModelConfig(**{**SIZES[size], "strategy": strategy, **overrides})


def transformer(size: str = "small", **overrides: Any) -> ModelConfig:
    """The baseline pre-norm Transformer (no reuse)."""
    return model_config(size, "baseline", **overrides)


def resformer(size: str = "small", mode: str = "learnable", **overrides: Any) -> ModelConfig:
    """ResFormer: static value residual (``mode`` fixed / learnable / softmax)."""
    return model_config(size, "static", strategy_options={"mode": mode}, **overrides)


def satformer(size: str = "small", act: str = "relu", last_k: int | None = None, **overrides: Any) -> ModelConfig:
    """SATFormer: selective value gate with activation ``act`` on all or the ``last_k`` layers."""
    return model_config(size, "satformer", strategy_options={"act": act, "last_k": last_k}, **overrides)


def satformer_tiny(**overrides: Any) -> ModelConfig:
    return satformer("tiny", **overrides)


def satformer_small(**overrides: Any) -> ModelConfig:
    return satformer("small", **overrides)


def denseformer(
    size: str = "small", dilation: int = 1, period: int = 1, impl: str = "buffer", **overrides: Any
) -> ModelConfig:
    """DenseFormer: depth-weighted average over all earlier block outputs (``dilation`` × ``period``)."""
    return model_config(
        size, "dense", strategy_options={"dilation": dilation, "period": period, "impl": impl}, **overrides
    )


def muddformer(size: str = "small", impl: str = "buffer", **overrides: Any) -> ModelConfig:
    """MUDDFormer: per-token dense connections for the query, key, value and residual streams."""
    return model_config(size, "mudd", strategy_options={"impl": impl}, **overrides)


def hyperconnections(size: str = "small", rate: int = 4, dynamic: bool = True, **overrides: Any) -> ModelConfig:
    """Hyper-Connections: ``rate`` residual streams with static or dynamic (default) mixing."""
    return model_config(size, "hyper", strategy_options={"rate": rate, "dynamic": dynamic}, **overrides)


#: One builder per strategy name (the recipes' table rows).
BUILDERS = {
    "baseline": transformer, "static": resformer, "satformer": satformer,
    "dense": denseformer, "mudd": muddformer, "hyper": hyperconnections,
}


def count_params(cfg: ModelConfig) -> int:
    """Parameter count of ``cfg``, computed on the meta device (no memory is allocated)."""
    from recipes.model import CausalLM

    with torch.device("meta"):
        return CausalLM(cfg).num_params()

