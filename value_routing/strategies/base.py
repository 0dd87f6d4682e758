"""The one protocol through which every reuse strategy plugs into a Transformer.

A strategy is an ``nn.Module`` spanning the whole depth. A model calls it from two places, the
layer loop and the block, through four hooks, one per routing concern. Every hook is a pure
function of its arguments: the strategy's per-pass ``state`` (V1, the depth buffer, the hyper
streams, ...) is passed in and returned, never stored on a module, so the same calls work
eagerly, under ``torch.compile`` and under activation checkpointing::

    inp, state = strategy.init_state(x0, tokens)             # x0: the embedding output
    for layer, block in enumerate(blocks):
        # inside the block:
        h = norm(inp.x)                                      # (inp.q / inp.k / inp.v when given)
        q, k, v = project(h)
        v, state = strategy.mix_value(layer, v, h, state)    # before attention and the KV cache
        x, state = strategy.residual(layer, 0, inp.x, attend(q, k, v), state)
        y, state = strategy.residual(layer, 1, x, mlp(norm(x)), state)
        # back in the loop:
        inp, state = strategy.block_output(layer, y, state)
    logits = head(norm(inp.x))

``init_state(x0, tokens)``
    The first block's :class:`BlockInput` and the initial state (``tokens`` for strategies that
    read the token ids; most ignore them).
``mix_value(layer, v, h, state)``
    The value path: rewrites block ``layer``'s raw value projection ``v`` (RoPE-free, before
    attention and the KV cache) from ``h``, the normed tensor ``v`` was projected from. Value
    strategies keep layer 0's raw values ``V1`` as their state.
``residual(layer, sublayer, x, out, state)``
    How sublayer ``0`` (attention) or ``1`` (MLP) output ``out`` joins the stream ``x``;
    default ``x + out``. Hyper-Connections route here.
``block_output(layer, y, state)``
    What the next block reads (a :class:`BlockInput`) from block ``layer``'s output ``y``: the
    routing over depth of DenseFormer and MUDDFormer. After the last layer its ``x`` feeds the
    final norm.

One optional hook lets a model fold a strategy's projection of ``h`` into its value GEMM:
``value_projection(layer)`` returns weight rows ``W`` (or ``None``); a model that fuses passes
``logits=h @ W.T``, computed in the same GEMM as ``v``, to ``mix_value``. A model that does not
fuse ignores it: the strategy then projects ``h`` itself.

Defaults are identities (the baseline), so a strategy overrides only what it routes, and a
block never inspects which strategy it runs with. ``separate_qkv_norms`` asks the block for
distinct learned norms of the query, key and value inputs (the MUDDFormer authors' form);
``separate_qkv_inputs`` says that ``block_output`` hands blocks distinct query/key/value inputs
at all, which a model projecting all three from one tensor (a Hugging Face attention) cannot run.

Patching a trained model calls for a start that computes what the model computed before:
:meth:`Strategy.preserving_options` completes a strategy's options to that parametrisation
(plain options, so any model built with them starts the same way), or says why there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from value_routing.registry import Registry
from value_routing.typing import Float, Int, Tensor


class BlockInput(NamedTuple):
    """What a block reads: the residual stream ``x`` and, when a strategy routes them apart,
    distinct query/key/value inputs (``None``: the residual input)."""

    x: Float[Tensor, "batch seq dim"]
    q: Float[Tensor, "batch seq dim"] | None = None
    k: Float[Tensor, "batch seq dim"] | None = None
    v: Float[Tensor, "batch seq dim"] | None = None


@dataclass(frozen=True)
class ModelDims:
    """The model dimensions a strategy may need to size its parameters. ``head_dim`` defaults to
    ``d_model // n_heads``; models that decouple the two (Qwen3, Gemma) give it."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int | None = None  # None: d_model // n_heads (an int after __post_init__)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)


class Strategy(nn.Module):
    """Base class of all reuse strategies; every hook defaults to the identity (no reuse)."""

    #: Whether blocks should give the query, key and value inputs separate learned norms.
    separate_qkv_norms: bool = False
    #: Whether ``block_output`` returns distinct query/key/value inputs (``BlockInput.q/k/v``).
    separate_qkv_inputs: bool = False

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers

    @classmethod
    def for_model(cls, dims: ModelDims, **options: Any) -> "Strategy":
        """Build the strategy for a model of the given dimensions (the registry's builder)."""
        return cls(n_layers=dims.n_layers, **options)

    @classmethod
    def preserving_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` completed so that the strategy starts as the identity on the model's function
        (a patched model's logits equal the unpatched model's at initialisation) while every new
        parameter can learn; a ValueError naming the option that rules such a start out.

        Override it in every strategy: the base class knows no such start and raises.
        """
        raise ValueError(f"strategy {cls.__name__} declares no function-preserving start "
                         "(Strategy.preserving_options); pass preserve_function=False")

    def init_state(
        self, x0: Float[Tensor, "batch seq dim"], tokens: Int[Tensor, "batch seq"] | None = None
    ) -> tuple[BlockInput, Any]:
        return BlockInput(x0), None

    def value_projection(self, layer: int) -> Float[Tensor, "extra dim"] | None:
        """Rows a model may append to its value-input GEMM; their output becomes ``mix_value``'s ``logits``."""
        return None

    def mix_value(
        self,
        layer: int,
        v: Float[Tensor, "batch seq kv_heads head_dim"],
        h: Float[Tensor, "batch seq dim"],
        state: Any,
        logits: Float[Tensor, "batch seq extra"] | None = None,
    ) -> tuple[Float[Tensor, "batch seq kv_heads head_dim"], Any]:
        return v, state

    def residual(
        self, layer: int, sublayer: int, x: Float[Tensor, "batch seq dim"], out: Float[Tensor, "batch seq dim"],
        state: Any,
    ) -> tuple[Float[Tensor, "batch seq dim"], Any]:
        return x + out, state

    def block_output(self, layer: int, y: Float[Tensor, "batch seq dim"], state: Any) -> tuple[BlockInput, Any]:
        return BlockInput(y), state

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}"


#: Strategy names → classes: what ``ModelConfig.strategy`` names. Add your own with
#: ``@STRATEGIES.register("name")`` on a :class:`Strategy` subclass; its ``for_model(dims, **options)``
#: builds it and its constructor's keywords are the options (:func:`strategy_options`).
STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategy")


def strategy_options(name: str) -> dict[str, Any]:
    """The options of strategy ``name`` with their defaults (its constructor's keywords, without the
    model dimensions that ``for_model`` fills in)."""
    import inspect

    params = inspect.signature(STRATEGIES.lookup(name).__init__).parameters
    dims = {"self", "n_layers", "d_model", "n_heads", "n_kv_heads"}
    return {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in params.items()
            if k not in dims and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class ValueResidual(Strategy):
    """Base of the strategies that mix layer 0's raw values ``V1`` into later layers' values.

    Their state is ``V1``: ``None`` until layer 0's :meth:`mix_value` stores its raw values.
    Subclasses implement :meth:`mix_v1` for layers ``>= 1``.
    """

    def mix_value(self, layer, v, h, state, logits=None):
        check_layer(layer, self.n_layers)
        if layer == 0:
            # V1: a copy, so that the later mixes (which save V1 for backward) don't keep
            # layer 0's whole QKV output alive, of which ``v`` is a slice
            return v, v.contiguous()
        if state is None:
            raise ValueError(f"mix_value of layer {layer} needs V1 as its state: run layer 0 first (got None)")
        return self.mix_v1(layer, v, state, h, logits), state

    def mix_v1(
        self,
        layer: int,
        v: Float[Tensor, "batch seq kv_heads head_dim"],
        v1: Float[Tensor, "batch seq kv_heads head_dim"],
        h: Float[Tensor, "batch seq dim"],
        logits: Float[Tensor, "batch seq extra"] | None,
    ) -> Float[Tensor, "batch seq kv_heads head_dim"]:
        """``V'`` of ``layer >= 1`` from its raw values ``v`` and ``V1``."""
        raise NotImplementedError


def fix_options(strategy: str, options: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``fixed`` set; a ValueError naming an option the caller set to another value."""
    for name, value in fixed.items():
        if name in options and options[name] != value:
            raise ValueError(f"{strategy} starts as the identity only with {name}={value!r}, got {name}="
                             f"{options[name]!r}: drop it or pass preserve_function=False")
    return {**options, **fixed}


def check_layer(layer: int, n_layers: int) -> None:
    """Raise a ValueError naming ``layer`` if it is outside ``[0, n_layers)``."""
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in [0, {n_layers}), got {layer}")


def rms_normalize(x: Float[Tensor, "... dim"], eps: float) -> Float[Tensor, "... dim"]:
    r""":math:`x / \sqrt{\mathrm{mean}(x^2) + \epsilon}` over the last axis, computed in float32 at
    least (float64 stays float64), returned in ``x``'s dtype. The blocks' ``RMSNorm`` and the
    strategies' own norms share it."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
