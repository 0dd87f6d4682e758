"""Model configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from recipes.validate import check_choice, check_min
from value_routing.attention import BACKENDS
from value_routing.strategies import STRATEGIES, ModelDims, build_strategy


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only LM with a reuse strategy.

    ``strategy`` names an entry of :data:`value_routing.STRATEGIES`; ``strategy_options`` are
    passed to its constructor (e.g. ``{"act": "sigmoid", "last_k": 4}`` for ``satformer``).
    ``d_ff`` defaults to ``4 * d_model`` (SwiGLU hidden width), ``n_kv_heads`` to ``n_heads``.
    """

    vocab_size: int = 32000
    d_model: int = 768
    n_layers: int = 11
    n_heads: int = 12
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    qk_norm: bool = False
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02
    strategy: str = "baseline"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    attention_backend: str = "auto"
    #: Fold the strategy's extra projection (SATFormer's ``W_α``) into each block's QKV GEMM.
    fuse_gate_projection: bool = False
    #: Recompute each block in backward instead of keeping its activations (training only).
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_min(self, 1, "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim = d_model / n_heads must be even for RoPE, got {self.d_model // self.n_heads}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"d_ff must be >= 1, got {self.d_ff}")
        check_choice(self, "strategy", STRATEGIES)
        check_choice(self, "attention_backend", BACKENDS)
        for name in ("fuse_gate_projection", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self._check_strategy_options()

    def _check_strategy_options(self) -> None:
        """Build the strategy on the meta device so bad options fail here, naming the field."""
        try:
            with torch.device("meta"):
                build_strategy(self.strategy, self.dims, **self.strategy_options)
        except TypeError as err:
            raise ValueError(f"strategy_options {dict(self.strategy_options)} do not fit strategy {self.strategy!r}: {err}") from err
        except ValueError as err:
            raise ValueError(f"strategy_options: {err}") from err

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def dims(self) -> ModelDims:
        return ModelDims(self.d_model, self.n_layers, self.n_heads, self.kv_heads)

    def with_strategy(self, strategy: str, **options: Any) -> "ModelConfig":
        """A copy of this config running another strategy."""
        return replace(self, strategy=strategy, strategy_options=dict(options))
