"""Causal self-attention with GQA, optional qk-norm, a value-routing hook and a KV cache."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from blocks.layers import RMSNorm, apply_rope
from value_routing.attention import AttentionMask
from value_routing.typing import Float, Tensor

#: ``mix(v, v1, h) -> v'``: the strategy's value hook bound to one layer; it also takes
#: ``logits=`` when the block fuses the strategy's extra projection into its value GEMM.
ValueMix = Callable[[Tensor, Tensor | None, Tensor], Tensor]


class LayerCache(NamedTuple):
    """Preallocated keys and values of one layer, ``(batch, max_len, kv_heads, head_dim)``."""

    k: Float[Tensor, "batch max_len kv_heads head_dim"]
    v: Float[Tensor, "batch max_len kv_heads head_dim"]


class AttentionOutput(NamedTuple):
    out: Float[Tensor, "batch seq dim"]
    v_raw: Float[Tensor, "batch seq kv_heads head_dim"]


class CausalSelfAttention(nn.Module):
    """Multi-head attention; ``q``, ``k``, ``v`` come from one fused projection."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, qk_norm: bool, norm_eps: float) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_dim, self.kv_dim = n_heads * self.head_dim, n_kv_heads * self.head_dim
        self.wqkv = nn.Linear(d_model, self.q_dim + 2 * self.kv_dim, bias=False)
        self.wo = nn.Linear(self.q_dim, d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None

    def project(
        self, hq: Tensor, hk: Tensor, hv: Tensor, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Project to q, k, v and, given ``extra`` weight rows, ``hv @ extraᵀ``.

        One GEMM when all inputs are the same tensor; otherwise one per input, with ``extra``
        appended to the value GEMM. Either way ``extra`` multiplies ``hv``, the tensor the value
        hook receives as ``h``, so the fused result is exact. Appending costs a weight copy.
        """
        n_extra = 0 if extra is None else extra.shape[0]
        if hk is hq and hv is hq:
            w = self.wqkv.weight if extra is None else torch.cat((self.wqkv.weight, extra.to(self.wqkv.weight)))
            q, k, v, e = F.linear(hq, w).split((self.q_dim, self.kv_dim, self.kv_dim, n_extra), dim=-1)
        else:
            w_q, w_k, w_v = self.wqkv.weight.split((self.q_dim, self.kv_dim, self.kv_dim), dim=0)
            w_v = w_v if extra is None else torch.cat((w_v, extra.to(w_v)))
            q, k = F.linear(hq, w_q), F.linear(hk, w_k)
            v, e = F.linear(hv, w_v).split((self.kv_dim, n_extra), dim=-1)
        return q, k, v, (None if extra is None else e)

    def forward(
        self,
        hq: Float[Tensor, "batch seq dim"],
        hk: Float[Tensor, "batch seq dim"] | None,
        hv: Float[Tensor, "batch seq dim"] | None,
        *,
        v1: Float[Tensor, "batch seq kv_heads head_dim"] | None,
        mix_value: ValueMix,
        rope: tuple[Tensor, Tensor],
        mask: AttentionMask,
        attend: Callable[..., Tensor],
        cache: LayerCache | None = None,
        extra_projection: Float[Tensor, "extra dim"] | None = None,
    ) -> AttentionOutput:
        """``extra_projection``: rows fused into the value-input GEMM, their output handed to
        ``mix_value`` as ``logits`` (see ``Strategy.extra_value_projection``)."""
        batch, seq, _ = hq.shape
        hk, hv = hq if hk is None else hk, hq if hv is None else hv
        q, k, v, logits = self.project(hq, hk, hv, extra_projection)
        q = q.view(batch, seq, self.n_heads, self.head_dim)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim)
        v_raw = v.view(batch, seq, self.n_kv_heads, self.head_dim)
        v = mix_value(v_raw, v1, hv) if logits is None else mix_value(v_raw, v1, hv, logits=logits)
        v = v.contiguous()  # an unmixed v is a slice of the QKV output: don't keep all of it for backward
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            end = mask.q_offset + seq
            cache.k[:, mask.q_offset : end] = k
            cache.v[:, mask.q_offset : end] = v
            k, v = cache.k[:, :end], cache.v[:, :end]
        out = attend(q, k, v, mask).reshape(batch, seq, self.q_dim)
        return AttentionOutput(self.wo(out), v_raw)
