"""Model configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from recipes.lm.checks import check_choice, check_min
from value_routing.attention import BACKENDS
from value_routing.strategies import STRATEGIES, ModelDims, build_strategy

#: Fields that may be ``None`` (a default derived from other fields).
_OPTIONAL = ("qk_norm_eps", "out_proj_std")


def realloc_ffn_width(d_ff: int, layer: int, n_layers: int) -> int:
    r"""MUDDFormer's parameter reallocation: the FFN width of layer ``layer`` (1-indexed) of ``n_layers``.

    .. math:: D_f(i) = \frac{0.5 (L - i) + 1.5 (i - 1)}{L - 1} D_f

    rounded to an integer, then to the nearest multiple of 256 (ties down, as ``(n + 127) // 256``)
    and at least 256; a single layer keeps ``d_ff``. Shallow layers get half, deep ones 1.5×.
    """
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be in [1, n_layers] = [1, {n_layers}], got {layer}")
    if n_layers == 1:
        return d_ff
    width = int(round((0.5 * (n_layers - layer) + 1.5 * (layer - 1)) / (n_layers - 1) * d_ff))
    return max(256, (width + 127) // 256 * 256)


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only LM with a reuse strategy.

    ``strategy`` names an entry of :data:`value_routing.STRATEGIES`; ``strategy_options`` are
    passed to its constructor (e.g. ``{"act": "sigmoid", "last_k": 4}`` for ``satformer``).
    ``d_ff`` defaults to ``4 * d_model`` (SwiGLU hidden width), ``n_kv_heads`` to ``n_heads``.

    ``qk_norm_eps`` is the epsilon of the per-head q/k RMSNorms (``None``: ``norm_eps``; the
    paper presets use 1e-5, the default of the norm the authors build them with).
    ``out_proj_std`` is the init std of the attention output and SwiGLU down projections
    (``None``: GPT-2's ``init_std / √(2 n_layers)``; the paper presets use ``init_std``, and
    ``init_std / √rate`` for Hyper-Connections). ``ffn_realloc`` gives layer ``i = 1..L`` the
    MUDDFormer width ``(0.5 (L-i) + 1.5 (i-1)) / (L-1) · d_ff`` rounded to a multiple of 256
    (:func:`realloc_ffn_width`).
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
    qk_norm_eps: float | None = None
    tie_embeddings: bool = True
    init_std: float = 0.02
    out_proj_std: float | None = None
    ffn_realloc: bool = False
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
        for name in ("norm_eps", "qk_norm_eps", "init_std", "out_proj_std"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0{' or None' if name in _OPTIONAL else ''}, got {value}")
        for name in ("qk_norm", "tie_embeddings", "ffn_realloc", "fuse_gate_projection", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_choice(self, "strategy", STRATEGIES)
        check_choice(self, "attention_backend", BACKENDS)
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
    def ffn_dims(self) -> tuple[int, ...]:
        """SwiGLU hidden width of every layer: ``ffn_dim``, or reallocated over depth."""
        if not self.ffn_realloc:
            return (self.ffn_dim,) * self.n_layers
        return tuple(realloc_ffn_width(self.ffn_dim, i, self.n_layers) for i in range(1, self.n_layers + 1))

    @property
    def qk_eps(self) -> float:
        return self.norm_eps if self.qk_norm_eps is None else self.qk_norm_eps

    @property
    def out_std(self) -> float:
        """Init std of the output projections (see ``out_proj_std``)."""
        return self.init_std / math.sqrt(2 * self.n_layers) if self.out_proj_std is None else self.out_proj_std

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def dims(self) -> ModelDims:
        return ModelDims(self.d_model, self.n_layers, self.n_heads, self.kv_heads)

    def with_strategy(self, strategy: str, **options: Any) -> "ModelConfig":
        """A copy of this config running another strategy."""
        return replace(self, strategy=strategy, strategy_options=dict(options))
