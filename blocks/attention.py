"""Causal self-attention with GQA, optional qk-norm and a KV cache, in two steps around the value hook.

:meth:`CausalSelfAttention.project` yields q, k and the raw values v (plus, given extra weight
rows, their logits from the same GEMM); the block hands v to the strategy's ``mix_value``; then
:meth:`CausalSelfAttention.attend` applies RoPE, writes the cache and attends. The attention
itself never sees the strategy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from blocks.layers import RMSNorm, apply_rope
from value_routing.attention import AttentionBackend, AttentionMask
from value_routing.typing import Float, Tensor


class AttentionContext(NamedTuple):
    """What every layer's attention shares in one forward pass: the rotary tables of the
    positions, the mask and the backend."""

    rope: tuple[Float[Tensor, "*#batch seq half"], Float[Tensor, "*#batch seq half"]]
    mask: AttentionMask
    attend: AttentionBackend


class LayerCache(NamedTuple):
    """Preallocated keys and values of one layer, ``(batch, max_len, kv_heads, head_dim)``."""

    k: Float[Tensor, "batch max_len kv_heads head_dim"]
    v: Float[Tensor, "batch max_len kv_heads head_dim"]


class CausalSelfAttention(nn.Module):
    """Multi-head attention; ``q``, ``k``, ``v`` come from one fused projection.

    ``head_dim`` defaults to ``d_model // n_heads``; ``qkv_bias`` adds a bias to that projection
    (not to the output projection), as Qwen2 has.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, qk_norm: bool, norm_eps: float,
                 head_dim: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads if head_dim is None else head_dim
        self.q_dim, self.kv_dim = n_heads * self.head_dim, n_kv_heads * self.head_dim
        self.wqkv = nn.Linear(d_model, self.q_dim + 2 * self.kv_dim, bias=qkv_bias)
        self.wo = nn.Linear(self.q_dim, d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None

    def project(
        self,
        hq: Float[Tensor, "batch seq dim"],
        hk: Float[Tensor, "batch seq dim"],
        hv: Float[Tensor, "batch seq dim"],
        extra: Float[Tensor, "extra dim"] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """q ``(batch, seq, heads, head_dim)``, k and v ``(batch, seq, kv_heads, head_dim)`` and,
        given ``extra`` weight rows, ``hv @ extraᵀ``.

        One GEMM when all inputs are the same tensor; otherwise one per input, with ``extra``
        appended to the value GEMM. Either way ``extra`` multiplies ``hv``, the tensor the value
        hook receives as ``h``, so the fused result is exact. Appending costs a weight copy.
        """
        batch, seq, _ = hq.shape
        n_extra = 0 if extra is None else extra.shape[0]
        bias = self.wqkv.bias
        if hk is hq and hv is hq:
            w = self.wqkv.weight if extra is None else torch.cat((self.wqkv.weight, extra.to(self.wqkv.weight)))
            b = bias if bias is None or extra is None else torch.cat((bias, bias.new_zeros(n_extra)))
            q, k, v, e = F.linear(hq, w, b).split((self.q_dim, self.kv_dim, self.kv_dim, n_extra), dim=-1)
        else:
            sizes = (self.q_dim, self.kv_dim, self.kv_dim)
            w_q, w_k, w_v = self.wqkv.weight.split(sizes, dim=0)
            b_q, b_k, b_v = (None, None, None) if bias is None else bias.split(sizes)
            w_v = w_v if extra is None else torch.cat((w_v, extra.to(w_v)))
            b_v = b_v if b_v is None or extra is None else torch.cat((b_v, b_v.new_zeros(n_extra)))
            q, k = F.linear(hq, w_q, b_q), F.linear(hk, w_k, b_k)
            v, e = F.linear(hv, w_v, b_v).split((self.kv_dim, n_extra), dim=-1)
        return (q.view(batch, seq, self.n_heads, self.head_dim), k.view(batch, seq, self.n_kv_heads, self.head_dim),
                v.view(batch, seq, self.n_kv_heads, self.head_dim), None if extra is None else e)

    def attend(
        self,
        q: Float[Tensor, "batch seq heads head_dim"],
        k: Float[Tensor, "batch seq kv_heads head_dim"],
        v: Float[Tensor, "batch seq kv_heads head_dim"],
        ctx: AttentionContext,
        cache: LayerCache | None = None,
    ) -> Float[Tensor, "batch seq dim"]:
        """Attention of the (mixed) values ``v``: qk-norm, RoPE, the cache, the backend, the output projection."""
        batch, seq = q.shape[:2]
        v = v.contiguous()  # an unmixed v is a slice of the QKV output: don't keep all of it for backward
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *ctx.rope), apply_rope(k, *ctx.rope)
        if cache is not None:
            start = ctx.mask.q_offset
            end = start + seq
            cache.k[:, start:end] = k
            cache.v[:, start:end] = v
            k, v = cache.k[:, :end], cache.v[:, :end]
        out = ctx.attend(q, k, v, ctx.mask).reshape(batch, seq, self.q_dim)
        return self.wo(out)

    def reset_parameters(self, std: float, out_std: float) -> None:
        """N(0, ``std``) for the QKV projection (its bias, if any, zero), N(0, ``out_std``) for the output one."""
        nn.init.normal_(self.wqkv.weight, std=std)
        if self.wqkv.bias is not None:
            nn.init.zeros_(self.wqkv.bias)
        nn.init.normal_(self.wo.weight, std=out_std)
