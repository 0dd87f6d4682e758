"""Causal self-attention with GQA, optional qk-norm, a value-routing hook and a KV cache."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch.nn.functional as F
from torch import nn

from blocks.layers import RMSNorm, apply_rope
from value_routing.attention import AttentionMask
from value_routing.typing import Float, Tensor

#: ``mix(v, v1, h) -> v'``: the strategy's value hook bound to one layer.
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
        self, hq: Tensor, hk: Tensor | None, hv: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Project to q, k, v. One GEMM when all inputs are the same tensor (``hk is None``)."""
        if hk is None or hv is None:
            return self.wqkv(hq).split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)
        w_q, w_k, w_v = self.wqkv.weight.split((self.q_dim, self.kv_dim, self.kv_dim), dim=0)
        return F.linear(hq, w_q), F.linear(hk, w_k), F.linear(hv, w_v)

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
    ) -> AttentionOutput:
        batch, seq, _ = hq.shape
        q, k, v = self.project(hq, hk, hv)
        q = q.view(batch, seq, self.n_heads, self.head_dim)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim)
        v_raw = v.view(batch, seq, self.n_kv_heads, self.head_dim)
        v = mix_value(v_raw, v1, hq if hv is None else hv)
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
