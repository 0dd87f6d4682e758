"""The one protocol through which every reuse strategy plugs into a Transformer.

A strategy is an ``nn.Module`` spanning the whole depth. The model calls five hooks, all
pure functions of their arguments (state is passed and returned, never stored on modules):

``init_state(x0)``
    Called once with the embedding output; returns the strategy's stream state.
``block_input(layer, x, state)``
    The inputs block ``layer`` reads: a :class:`BlockInput` (one residual tensor, optionally
    distinct query/key/value inputs).
``mix_value(layer, v, v1, h)``
    Rewrites block ``layer``'s value projection ``v`` (RoPE-free, before attention and before
    the KV cache). ``v1`` is layer 0's raw value projection, ``h`` the normed block input.
``residual(layer, sublayer, x, out, state)``
    Joins sublayer ``0`` (attention) or ``1`` (MLP) output ``out`` to its input ``x``; returns
    the next stream and state. The default is the plain ``x + out``; strategies that route
    around each sublayer (the Hyper-Connections authors' form) override it.
``block_output(layer, y, state)``
    Turns the block output into the next residual ``x`` and the next state.
``finalize(x, state)``
    The hidden state fed to the final norm and LM head.

One optional hook lets the model fold a strategy's projection of ``h`` into the block's
GEMM: ``extra_value_projection(layer)`` returns weight rows ``W`` (or ``None``); a model that
fuses calls ``mix_value(layer, v, v1, h, logits=h @ W.T)`` with those rows computed in the
same GEMM as ``v`` (from the same input ``h``), so the strategy must accept ``logits=``.

Defaults are identities, so a strategy overrides only what it routes. A block never
inspects which strategy it runs with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from value_routing.typing import Float, Tensor


class BlockInput(NamedTuple):
    """What a block reads. ``q``/``k``/``v`` default to the residual input when ``None``."""

    x: Float[Tensor, "batch seq dim"]
    q: Float[Tensor, "batch seq dim"] | None = None
    k: Float[Tensor, "batch seq dim"] | None = None
    v: Float[Tensor, "batch seq dim"] | None = None


@dataclass(frozen=True)
class ModelDims:
    """The model dimensions a strategy may need to size its parameters."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Strategy(nn.Module):
    """Base class of all reuse strategies; every hook defaults to the identity (no reuse)."""

    #: Whether ``mix_value`` needs layer 0's value projection (lets blocks skip passing it).
    uses_v1: bool = False
    #: Whether blocks should give the query, key and value inputs separate learned norms.
    separate_qkv_norms: bool = False

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers

    @classmethod
    def for_model(cls, dims: ModelDims, **options: Any) -> "Strategy":
        """Build the strategy for a model of the given dimensions."""
        return cls(n_layers=dims.n_layers, **options)

    def init_state(self, x0: Float[Tensor, "batch seq dim"]) -> Any:
        return None

    def block_input(self, layer: int, x: Float[Tensor, "batch seq dim"], state: Any) -> BlockInput:
        return BlockInput(x)

    def mix_value(
        self,
        layer: int,
        v: Float[Tensor, "batch seq kv_heads head_dim"],
        v1: Float[Tensor, "batch seq kv_heads head_dim"] | None,
        h: Float[Tensor, "batch seq dim"],
    ) -> Float[Tensor, "batch seq kv_heads head_dim"]:
        return v

    def extra_value_projection(self, layer: int) -> Float[Tensor, "extra dim"] | None:
        """Rows the block may append to its value-input GEMM; their output becomes ``logits``."""
        return None

    def residual(
        self, layer: int, sublayer: int, x: Float[Tensor, "batch seq dim"], out: Float[Tensor, "batch seq dim"],
        state: Any,
    ) -> tuple[Float[Tensor, "batch seq dim"], Any]:
        return x + out, state

    def block_output(
        self, layer: int, y: Float[Tensor, "batch seq dim"], state: Any
    ) -> tuple[Float[Tensor, "batch seq dim"], Any]:
        return y, state

    def finalize(self, x: Float[Tensor, "batch seq dim"], state: Any) -> Float[Tensor, "batch seq dim"]:
        return x

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}"


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
