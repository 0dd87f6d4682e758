"""Model configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from blocks import BLOCKS, BlockSpec
from recipes.lm.checks import check_choice, check_min
from value_routing.attention import ATTENTION_BACKENDS
from value_routing.strategies import STRATEGIES, ModelDims, build_strategy, strategy_options


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


#: Fields that ``None`` derives from others at construction (see :class:`ModelConfig`).
_DERIVED: dict[str, Any] = {
    "n_kv_heads": lambda c: c.n_heads,
    "head_dim": lambda c: c.d_model // c.n_heads,
    "d_ff": lambda c: 4 * c.d_model,
    "qk_norm_eps": lambda c: c.norm_eps,
    "out_proj_std": lambda c: c.init_std / math.sqrt(2 * c.n_layers),
}


#: The numeric fields, with the Python types they take (bools are refused) and how errors call them.
_NUMERIC_FIELDS = (
    (("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "n_kv_heads", "head_dim", "d_ff"), int,
     "an integer"),
    (("rope_theta", "norm_eps", "qk_norm_eps", "init_std", "out_proj_std"), (int, float), "a number"),
)


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only LM with a reuse strategy.

    ``strategy`` names an entry of :data:`value_routing.STRATEGIES`; ``strategy_options`` are
    passed to its constructor (e.g. ``{"act": "sigmoid", "last_k": 4}`` for ``satformer``).
    ``block`` names the block factory (:data:`blocks.BLOCKS`), ``attention_backend`` the attention
    (:data:`value_routing.attention.ATTENTION_BACKENDS`); both registries are open to users.

    Five fields given as ``None`` are derived, once, at construction (as Hugging Face configs do),
    so each concept has one name and the instance always holds the value in use: ``n_kv_heads``
    (``n_heads``), ``head_dim`` (``d_model // n_heads``; set it to decouple the attention width
    ``n_heads * head_dim`` from ``d_model``, as Qwen3 does), ``d_ff`` (``4 * d_model``, the SwiGLU
    hidden width), ``qk_norm_eps``
    (``norm_eps``; the epsilon of the per-head q/k RMSNorms; the paper presets use 1e-5, the
    default of the norm the authors build them with) and ``out_proj_std`` (GPT-2's
    ``init_std / √(2 n_layers)``; the init std of the attention output and SwiGLU down
    projections; the paper presets use ``init_std``, and ``init_std / √rate`` for
    Hyper-Connections). ``dataclasses.replace`` keeps the derived values: pass ``None`` again
    to re-derive one after changing what it depends on. ``ffn_realloc`` gives layer ``i = 1..L`` the
    MUDDFormer width ``(0.5 (L-i) + 1.5 (i-1)) / (L-1) · d_ff`` rounded to a multiple of 256
    (:func:`realloc_ffn_width`).

    Two normalization options of the plain block (the layer-wise baselines reuse is compared with):
    ``layernorm_scaling`` (LayerNorm Scaling, Sun et al. 2025, "The Curse of Depth in Large Language
    Models", as its official code runs it) multiplies both pre-norm outputs of block ``ℓ = 1..L`` by
    ``1/√ℓ``; ``peri_norm`` (Peri-LN, Kim et al. 2025; the sandwich norm of Gemma 2) adds a learned
    RMSNorm on each sublayer's output before it joins the residual stream,
    ``x + Norm(Sublayer(Norm(x)))``. Both default to off, which is the plain pre-norm block.

    ``qkv_bias`` gives the query, key and value projections a bias (Qwen2's attention; the output
    projection keeps none). Off by default.
    """

    vocab_size: int = 32000
    d_model: int = 768
    n_layers: int = 11
    n_heads: int = 12
    n_kv_heads: int | None = None
    head_dim: int | None = None
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
    layernorm_scaling: bool = False
    peri_norm: bool = False
    qkv_bias: bool = False
    strategy: str = "baseline"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    attention_backend: str = "auto"
    block: str = "transformer"
    #: Recompute each block in backward instead of keeping its activations (training only).
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for names, kind, what in _NUMERIC_FIELDS:
            for name in names:
                value = getattr(self, name)
                if (isinstance(value, bool) or not isinstance(value, kind)) and not (value is None and name in _DERIVED):
                    raise ValueError(f"{name} must be {what}{' or None' if name in _DERIVED else ''}, got {value!r}")
        if not isinstance(self.strategy_options, Mapping):
            raise ValueError(f"strategy_options must be a mapping of option names to values, got {self.strategy_options!r}")
        check_min(self, 1, "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                                 "unless head_dim is given")
            if (self.d_model // self.n_heads) % 2:
                raise ValueError(f"head_dim = d_model / n_heads must be even for RoPE, "
                                 f"got {self.d_model // self.n_heads}")
        elif self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim must be an even integer >= 2 (RoPE rotates channel pairs) or None, "
                             f"got {self.head_dim}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"d_ff must be >= 1 or None, got {self.d_ff}")
        for name in ("norm_eps", "qk_norm_eps", "init_std", "out_proj_std"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < math.inf:
                raise ValueError(f"{name} must be >= 0{' or None' if name in _DERIVED else ''} (finite), got {value}")
        if not 0 < self.rope_theta < math.inf:
            raise ValueError(f"rope_theta must be > 0 (finite; the RoPE base), got {self.rope_theta}")
        for name in ("qk_norm", "tie_embeddings", "ffn_realloc", "layernorm_scaling", "peri_norm", "qkv_bias",
                     "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_choice(self, "strategy", STRATEGIES)
        check_choice(self, "attention_backend", ATTENTION_BACKENDS)
        check_choice(self, "block", BLOCKS)
        for name, derive in _DERIVED.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, derive(self))
        self._check_strategy_options()

    def _check_strategy_options(self) -> None:
        """Build the strategy on the meta device so bad options fail here, naming the field."""
        try:
            with torch.device("meta"):
                build_strategy(self.strategy, self.dims, **self.strategy_options)
        except TypeError as err:
            known = ", ".join(strategy_options(self.strategy)) or "none"
            raise ValueError(f"strategy_options {dict(self.strategy_options)} do not fit strategy {self.strategy!r} "
                             f"(its options: {known}): {err}") from err
        except ValueError as err:
            raise ValueError(f"strategy_options: {err}") from err

    @property
    def d_ff_per_layer(self) -> tuple[int, ...]:
        """SwiGLU hidden width of every layer: ``d_ff``, or reallocated over depth (``ffn_realloc``)."""
        if not self.ffn_realloc:
            return (self.d_ff,) * self.n_layers
        return tuple(realloc_ffn_width(self.d_ff, i, self.n_layers) for i in range(1, self.n_layers + 1))

    @property
    def dims(self) -> ModelDims:
        return ModelDims(self.d_model, self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim, self.vocab_size)

    def block_spec(self, layer: int, separate_qkv_norms: bool = False) -> BlockSpec:
        """What the block factory needs to build block ``layer``."""
        return BlockSpec(layer, self.d_model, self.n_heads, self.n_kv_heads, self.d_ff_per_layer[layer], self.qk_norm,
                         self.norm_eps, self.qk_norm_eps, separate_qkv_norms,
                         norm_scale=1 / math.sqrt(layer + 1) if self.layernorm_scaling else 1.0,
                         peri_norm=self.peri_norm, head_dim=self.head_dim, qkv_bias=self.qkv_bias)

    def with_strategy(self, strategy: str, **options: Any) -> "ModelConfig":
        """A copy of this config running another strategy."""
        return replace(self, strategy=strategy, strategy_options=dict(options))
