"""Builders returning configs: model sizes from the SATFormer paper × reuse strategies.

``small`` … ``xl`` are the SATFormer authors' public configs (``configs/<model>/<size>.json``):
vocab 32000 (Llama-2 tokenizer), 4096 positions, tied embeddings, RoPE θ 10 000, norm ε 1e-6,
qk-norm with ε 1e-5, every weight N(0, 0.02) with no depth rescale of output projections; and
for the dense baselines the authors' forms (:data:`PAPER_OPTIONS`, :func:`paper_fields`).
``xl`` uses their Transformer/ResFormer file (32 heads, d_ff 5632): their SATFormer xl file
says 24 heads and d_ff 5504, and 2048 is not divisible by 24. ``tiny`` is our CPU size.

``python -m recipes.tools.params`` prints the parameter count of every size and strategy
(``--json`` as JSON).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from recipes.lm.config import ModelConfig
from value_routing.strategies import STRATEGIES

#: What every paper size shares (the authors' configs, all models).
PAPER_COMMON: dict[str, Any] = dict(
    vocab_size=32000, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-6, qk_norm=True, qk_norm_eps=1e-5,
    tie_embeddings=True, init_std=0.02, out_proj_std=0.02,
)

#: Architecture of each size. ``tiny`` is byte-level for CPU demos, with our own choices (GQA,
#: d_ff = 4 d_model, no qk-norm, GPT-2's 1/√(2L) output-projection init).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=512),
    "small": dict(PAPER_COMMON, d_model=768, n_layers=11, n_heads=12, d_ff=3072),
    "medium": dict(PAPER_COMMON, d_model=1024, n_layers=18, n_heads=16, d_ff=4096),
    "large": dict(PAPER_COMMON, d_model=1536, n_layers=19, n_heads=24, d_ff=6144),
    "xl": dict(PAPER_COMMON, d_model=2048, n_layers=24, n_heads=32, d_ff=5632),
}

#: The sizes of the paper (all but ``tiny``).
PAPER_SIZES: tuple[str, ...] = ("small", "medium", "large", "xl")

#: Strategy options the authors' code pins at the paper sizes (the forms of their baselines).
PAPER_OPTIONS: dict[str, dict[str, Any]] = {
    "static": {"mode": "softmax"},
    "mudd": {"form": "authors"},
    "hyper": {"form": "authors"},
}


def paper_fields(strategy: str, options: dict[str, Any], init_std: float = 0.02) -> dict[str, Any]:
    """ModelConfig fields the authors' form of ``strategy`` needs: MUDDFormer's FFN reallocation
    over depth; Hyper-Connections' output projections scaled by 1/√rate at init."""
    if strategy == "mudd" and options.get("form") == "authors":
        return {"ffn_realloc": True}
    if strategy == "hyper" and options.get("form") == "authors":
        return {"out_proj_std": init_std / math.sqrt(options.get("rate", 4))}
    return {}


def model_config(size: str = "small", strategy: str = "baseline", **overrides: Any) -> ModelConfig:
    """Config of ``size`` running ``strategy``; ``overrides`` replace any ModelConfig field.

    At the paper sizes, ``strategy_options`` start from :data:`PAPER_OPTIONS` (options given
    win). An authors' form (at any size) sets the fields of :func:`paper_fields` unless overridden.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    STRATEGIES.lookup(strategy)  # a ValueError naming the registered strategies
    fields, options = dict(SIZES[size]), dict(overrides.pop("strategy_options", None) or {})
    if size in PAPER_SIZES:
        options = {**PAPER_OPTIONS.get(strategy, {}), **options}
    fields.update(paper_fields(strategy, options, overrides.get("init_std", fields.get("init_std", 0.02))))
    return ModelConfig(**{**fields, "strategy": strategy, "strategy_options": options, **overrides})


def transformer(size: str = "small", **overrides: Any) -> ModelConfig:
    """The baseline pre-norm Transformer (no reuse)."""
    return model_config(size, "baseline", **overrides)


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def resformer(size: str = "small", mode: str | None = None, **overrides: Any) -> ModelConfig:
    """ResFormer: static value residual (``mode`` fixed / learnable / softmax; default softmax at
    the paper sizes, the authors' only form, and learnable at ``tiny``)."""
    return model_config(size, "static", strategy_options=_given(mode=mode), **overrides)


def satformer(size: str = "small", act: str = "relu", last_k: int | None = None, **overrides: Any) -> ModelConfig:
    """SATFormer: selective value gate with activation ``act`` on all or the ``last_k`` layers."""
    return model_config(size, "satformer", strategy_options={"act": act, "last_k": last_k}, **overrides)


def denseformer(
    size: str = "small", dilation: int = 1, period: int = 1, impl: str = "buffer", **overrides: Any
) -> ModelConfig:
    """DenseFormer: depth-weighted average over all earlier block outputs (``dilation`` × ``period``)."""
    return model_config(
        size, "dense", strategy_options={"dilation": dilation, "period": period, "impl": impl}, **overrides
    )


def muddformer(size: str = "small", impl: str = "buffer", form: str | None = None, **overrides: Any) -> ModelConfig:
    """MUDDFormer: per-token dense connections for the query, key, value and residual streams
    (``form`` default: ``"authors"`` at the paper sizes, ``"ours"`` at ``tiny``)."""
    return model_config(size, "mudd", strategy_options=_given(impl=impl, form=form), **overrides)


def hyperconnections(
    size: str = "small", rate: int = 4, dynamic: bool = True, form: str | None = None, **overrides: Any
) -> ModelConfig:
    """Hyper-Connections: ``rate`` residual streams with static or dynamic (default) mixing
    (``form`` default: ``"authors"`` at the paper sizes, ``"ours"`` at ``tiny``)."""
    return model_config(size, "hyper", strategy_options=_given(rate=rate, dynamic=dynamic, form=form), **overrides)


def attnres(size: str = "small", block_size: int = 1, impl: str = "buffer", **overrides: Any) -> ModelConfig:
    """Attention Residuals: each sublayer reads a softmax over depth of the embedding and the earlier
    sublayer outputs (``block_size=1``, Full AttnRes) or of completed blocks of ``block_size``
    sublayers and the current block's partial sum (Block AttnRes)."""
    return model_config(size, "attnres", strategy_options={"block_size": block_size, "impl": impl}, **overrides)
def lerp_value_residual(
    size: str = "small", init_std: float | None = None, bias_init: float | None = None, **overrides: Any
) -> ModelConfig:
    """x-transformers' learned value-residual mix: ``V' = σ(W h + b)·V + (1 − σ)·V1`` per token and
    kv-head (``None``: ``nn.Linear``'s default init of ``W`` / ``b``, as x-transformers)."""
    return model_config(size, "lerp", strategy_options=_given(init_std=init_std, bias_init=bias_init), **overrides)


def embedding_shortcut(size: str = "small", gate: bool = False, x0_norm: bool = False, **overrides: Any) -> ModelConfig:
    """modded-nanogpt's embedding shortcut: block ℓ reads ``λr_ℓ x + λ0_ℓ x0`` (``gate``: λ0 per
    token; ``x0_norm``: RMS-normalise the embedding first, as modded-nanogpt)."""
    return model_config(size, "shortcut", strategy_options={"gate": gate, "x0_norm": x0_norm}, **overrides)


def value_embeddings(
    size: str = "small", gate: bool = True, layers: str | Sequence[int] = "speedrun",
    tables: Sequence[int] | None = None, **overrides: Any
) -> ModelConfig:
    """modded-nanogpt's value embeddings: ``V' = V + g·E[token]`` on the layers of ``layers`` (a
    pattern scaled to the depth, or layer indices, reading ``tables``), ``g = 2σ(W [h[:6]; e[:6]])``
    (``gate=False``: 1). Index sequences are stored as lists, as a JSON config reads them back."""
    options: dict[str, Any] = {"gate": gate, "layers": layers if isinstance(layers, str) else list(layers)}
    if tables is not None:
        options["tables"] = list(tables)
    return model_config(size, "value_embed", strategy_options=options, **overrides)
def mhc(
    size: str = "small", rate: int = 4, sinkhorn_iters: int = 20, form: str | None = None, **overrides: Any
) -> ModelConfig:
    """mHC: ``rate`` residual streams whose mixing matrix is projected onto the doubly stochastic
    matrices by ``sinkhorn_iters`` Sinkhorn–Knopp iterations (``form`` default ``"authors"``: one
    connection per sublayer, the paper's and DeepSeek-V4's; ``"ours"``: one per block)."""
    return model_config(
        size, "mhc", strategy_options=_given(rate=rate, sinkhorn_iters=sinkhorn_iters, form=form), **overrides
    )


def count_params(cfg: ModelConfig) -> int:
    """Parameter count of ``cfg``, computed on the meta device (no memory is allocated)."""
    from recipes.lm.model import CausalLM

    with torch.device("meta"):
        return CausalLM(cfg).num_params()


def param_counts() -> dict[str, dict[str, int]]:
    """Parameter count of every size × registered strategy (:func:`model_config` with its defaults)."""
    return {size: {name: count_params(model_config(size, name)) for name in STRATEGIES} for size in SIZES}
