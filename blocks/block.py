"""The pre-norm Transformer block that runs any reuse strategy."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from torch import nn

from blocks.attention import CausalSelfAttention, LayerCache, ValueMix
from blocks.layers import RMSNorm, SwiGLU
from value_routing.attention import AttentionMask
from value_routing.strategies.base import BlockInput
from value_routing.typing import Float, Tensor

#: ``residual(sublayer, x, out, state) -> (x', state)``: how sublayer 0 (attention) or 1 (MLP)
#: joins its input ``x``; the strategy's ``residual`` hook bound to one layer.
Residual = Callable[[int, Tensor, Tensor, Any], tuple[Tensor, Any]]


def add_residual(sublayer: int, x: Tensor, out: Tensor, state: Any) -> tuple[Tensor, Any]:
    """The plain residual ``x + out``."""
    return x + out, state


class BlockOutput(NamedTuple):
    y: Float[Tensor, "batch seq dim"]
    v_raw: Float[Tensor, "batch seq kv_heads head_dim"]
    state: Any = None


class TransformerBlock(nn.Module):
    """``a = x + Attn(norm(q), norm(k), norm(v)); y = a + SwiGLU(norm(a))``.

    ``q``, ``k`` and ``v`` are the residual input unless the strategy supplies its own (as
    MUDDFormer does); with ``separate_qkv_norms`` each gets its own learned norm (the MUDDFormer
    authors' form), else one norm serves all three. The value projection passes through the
    strategy's ``mix_value``. Both ``+`` are the strategy's ``residual`` hook (plain additions
    unless it routes per sublayer, as the Hyper-Connections authors' form does), which threads
    the strategy state through the block. The block returns its raw (unmixed) value projection
    so layer 0's becomes ``V1``. ``extra_projection`` (the strategy's ``extra_value_projection``)
    is fused into the value GEMM and its output passed to ``mix_value`` as ``logits``.
    """

    def __init__(
        self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, qk_norm: bool = False,
        norm_eps: float = 1e-6, qk_norm_eps: float | None = None, separate_qkv_norms: bool = False,
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, norm_eps)
        self.attn_norm_k = RMSNorm(d_model, norm_eps) if separate_qkv_norms else None
        self.attn_norm_v = RMSNorm(d_model, norm_eps) if separate_qkv_norms else None
        self.attn = CausalSelfAttention(
            d_model, n_heads, n_kv_heads, qk_norm, norm_eps if qk_norm_eps is None else qk_norm_eps
        )
        self.ffn_norm = RMSNorm(d_model, norm_eps)
        self.ffn = SwiGLU(d_model, d_ff)

    def _normed_inputs(self, inp: BlockInput) -> tuple[Tensor, Tensor | None, Tensor | None]:
        h = self.attn_norm(inp.x if inp.q is None else inp.q)
        if self.attn_norm_k is None or self.attn_norm_v is None:
            return h, None if inp.k is None else self.attn_norm(inp.k), None if inp.v is None else self.attn_norm(inp.v)
        return h, self.attn_norm_k(inp.x if inp.k is None else inp.k), self.attn_norm_v(inp.x if inp.v is None else inp.v)

    def forward(
        self,
        inp: BlockInput,
        *,
        v1: Float[Tensor, "batch seq kv_heads head_dim"] | None,
        mix_value: ValueMix,
        rope: tuple[Tensor, Tensor],
        mask: AttentionMask,
        attend: Callable[..., Tensor],
        cache: LayerCache | None = None,
        extra_projection: Float[Tensor, "extra dim"] | None = None,
        residual: Residual = add_residual,
        state: Any = None,
    ) -> BlockOutput:
        h, hk, hv = self._normed_inputs(inp)
        attn = self.attn(
            h, hk, hv, v1=v1, mix_value=mix_value, rope=rope, mask=mask, attend=attend, cache=cache,
            extra_projection=extra_projection,
        )
        a, state = residual(0, inp.x, attn.out, state)
        y, state = residual(1, a, self.ffn(self.ffn_norm(a)), state)
        return BlockOutput(y, attn.v_raw, state)
