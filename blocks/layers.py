"""Building blocks of the pre-norm Transformer: RMSNorm, rotary embeddings and SwiGLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from value_routing.strategies.base import rms_normalize
from value_routing.typing import Float, Tensor


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, computed in float32, with an optional scale."""

    def __init__(self, dim: int, eps: float = 1e-6, scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
        out = rms_normalize(x, self.eps)  # in fp32 at least; fp64 stays fp64
        return out * self.weight if self.weight is not None else out


def rope_tables(
    head_dim: int, max_len: int, theta: float = 10000.0
) -> tuple[Float[Tensor, "max_len half"], Float[Tensor, "max_len half"]]:
    """Cosine and sine tables of rotary embeddings (``half = head_dim // 2``)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(
    x: Float[Tensor, "batch seq heads head_dim"],
    cos: Float[Tensor, "*#batch seq half"],
    sin: Float[Tensor, "*#batch seq half"],
) -> Float[Tensor, "batch seq heads head_dim"]:
    """Rotate channel pairs ``(i, i + half)`` by position-dependent angles (NeoX layout).

    The tables are ``(seq, half)`` when every row shares its positions, ``(batch, seq, half)``
    when they differ per row (padded batches)."""
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class SwiGLU(nn.Module):
    """``W2 (silu(W1 x) ⊙ W3 x)`` with ``W1`` and ``W3`` fused into one projection."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch seq dim"]:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)

    def reset_parameters(self, std: float, out_std: float) -> None:
        """N(0, ``std``) for ``W1``/``W3``, N(0, ``out_std``) for ``W2``."""
        nn.init.normal_(self.w13.weight, std=std)
        nn.init.normal_(self.w2.weight, std=out_std)
