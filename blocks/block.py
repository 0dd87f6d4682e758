"""The pre-norm Transformer block that runs any reuse strategy."""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import nn

from blocks.attention import CausalSelfAttention, LayerCache, ValueMix
from blocks.layers import RMSNorm, SwiGLU
from value_routing.attention import AttentionMask
from value_routing.strategies.base import BlockInput
from value_routing.typing import Float, Tensor


class BlockOutput(NamedTuple):
    y: Float[Tensor, "batch seq dim"]
    v_raw: Float[Tensor, "batch seq kv_heads head_dim"]


class TransformerBlock(nn.Module):
    """``a = x + Attn(norm(q), norm(k), norm(v)); y = a + SwiGLU(norm(a))``.

    ``q``, ``k`` and ``v`` are the residual input unless the strategy supplies its own (as
    MUDDFormer does); the value projection passes through the strategy's ``mix_value``.
    The block returns its raw (unmixed) value projection so layer 0's becomes ``V1``.
    ``extra_projection`` (the strategy's ``extra_value_projection``) is fused into the value
    GEMM and its output passed to ``mix_value`` as ``logits``.
    """

    def __init__(
        self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, qk_norm: bool = False, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, norm_eps)
        self.attn = CausalSelfAttention(d_model, n_heads, n_kv_heads, qk_norm, norm_eps)
        self.ffn_norm = RMSNorm(d_model, norm_eps)
        self.ffn = SwiGLU(d_model, d_ff)

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
    ) -> BlockOutput:
        h = self.attn_norm(inp.x if inp.q is None else inp.q)
        hk = None if inp.k is None else self.attn_norm(inp.k)
        hv = None if inp.v is None else self.attn_norm(inp.v)
        attn = self.attn(
            h, hk, hv, v1=v1, mix_value=mix_value, rope=rope, mask=mask, attend=attend, cache=cache,
            extra_projection=extra_projection,
        )
        a = inp.x + attn.out
        return BlockOutput(a + self.ffn(self.ffn_norm(a)), attn.v_raw)
