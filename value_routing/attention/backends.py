"""Attention backends behind one interface: torch SDPA everywhere, xFormers on CUDA.

Every backend maps ``q (batch, q_len, heads, head_dim)``, ``k, v (batch, kv_len, kv_heads,
head_dim)`` and an :class:`AttentionMask` to ``(batch, q_len, heads, head_dim)``; grouped-query
attention (``kv_heads`` dividing ``heads``) is handled inside.

Backends are looked up by name in :data:`ATTENTION_BACKENDS`, whose entries are *factories*:
``factory(device) -> backend`` (or raise a ValueError saying why it cannot run there). Add your own
from anywhere::

    ATTENTION_BACKENDS.register("mine", lambda device: my_attention)   # ModelConfig(attention_backend="mine")

``auto`` degrades instead of failing mid-run: when xFormers cannot be imported, or raises on its
first calls (an unsupported shape, dtype or GPU), it warns once, naming the reason, and uses SDPA
for the rest of the process. An explicit ``xformers`` raises instead.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from value_routing.attention.mask import AttentionMask
from value_routing.registry import Registry
from value_routing.typing import Float, Tensor, shapecheck


class AttentionBackend(Protocol):
    def __call__(
        self,
        q: Float[Tensor, "batch q_len heads head_dim"],
        k: Float[Tensor, "batch kv_len kv_heads head_dim"],
        v: Float[Tensor, "batch kv_len kv_heads head_dim"],
        mask: AttentionMask,
    ) -> Float[Tensor, "batch q_len heads head_dim"]: ...


@shapecheck
def sdpa_attention(
    q: Float[Tensor, "batch q_len heads head_dim"],
    k: Float[Tensor, "batch kv_len kv_heads head_dim"],
    v: Float[Tensor, "batch kv_len kv_heads head_dim"],
    mask: AttentionMask,
) -> Float[Tensor, "batch q_len heads head_dim"]:
    """``torch.nn.functional.scaled_dot_product_attention`` with the given mask."""
    batch, q_len, heads, _ = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    mask.check(batch, q_len, kv_len)
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    gqa = heads != kv_heads
    # Branch in Python so ``is_causal`` stays a constant when dynamo makes ``q_len`` symbolic.
    plain = mask.seq_lens is None and mask.key_keep is None
    if plain and q_len == 1:
        out = F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=gqa)
    elif plain and mask.q_offset == 0:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    else:
        dense = mask.dense(q_len, kv_len, q.device)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=dense, enable_gqa=gqa)
    return out.transpose(1, 2)


@functools.cache
def xformers_unavailable_reason() -> str | None:
    """Why xFormers' fused kernels cannot run here (no GPU, import error), or ``None`` if they can."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        from xformers.ops import memory_efficient_attention  # noqa: F401
    except Exception as exc:  # a broken or CPU-only install is "not available", not an error
        return f"cannot import xformers.ops: {type(exc).__name__}: {exc}"
    return None


def xformers_available() -> bool:
    """Whether xFormers' fused attention kernels can run (CUDA build importable with a GPU)."""
    return xformers_unavailable_reason() is None


def xformers_bias(mask: AttentionMask, q_len: int | None = None, kv_len: int | None = None,
                  dtype: torch.dtype = torch.float32):
    """The xFormers ``attn_bias`` equivalent to ``mask`` (pure Python; works on CPU).

    With key padding (``mask.key_keep``) that is a dense additive bias ``(batch, 1, 1, q_len,
    kv_len)`` (0 = may attend, -inf = masked) for the 5-D grouped layout, cut from a buffer whose
    last axis is padded to a multiple of 8 (xFormers' alignment rule for bias tensors).
    """
    if mask.key_keep is not None:
        if q_len is None or kv_len is None:
            raise ValueError("xformers_bias needs q_len and kv_len when the mask has key padding")
        batch, width = mask.key_keep.shape[0], -(-kv_len // 8) * 8
        storage = torch.empty(batch, 1, 1, q_len, width, dtype=dtype, device=mask.key_keep.device)
        bias = storage[..., :kv_len]
        allowed = mask.dense(q_len, kv_len, mask.key_keep.device)[:, None]  # (batch, 1, 1, q_len, kv_len)
        return bias.copy_(torch.zeros((), dtype=dtype, device=bias.device).masked_fill(~allowed, float("-inf")))
    from xformers.ops.fmha import attn_bias

    if mask.seq_lens is not None:
        return attn_bias.BlockDiagonalCausalMask.from_seqlens(list(mask.seq_lens))
    if mask.q_offset == 0:
        return attn_bias.LowerTriangularMask()
    return attn_bias.LowerTriangularFromBottomRightMask()


@shapecheck
def xformers_attention(
    q: Float[Tensor, "batch q_len heads head_dim"],
    k: Float[Tensor, "batch kv_len kv_heads head_dim"],
    v: Float[Tensor, "batch kv_len kv_heads head_dim"],
    mask: AttentionMask,
) -> Float[Tensor, "batch q_len heads head_dim"]:
    """xFormers ``memory_efficient_attention`` (CUDA only); GQA via the 5-D grouped layout."""
    from xformers.ops import memory_efficient_attention

    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    mask.check(batch, q_len, kv_len)
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    group = heads // kv_heads
    if mask.key_keep is not None:
        bias = xformers_bias(mask, q_len, kv_len, q.dtype).expand(batch, kv_heads, group, q_len, kv_len)
    else:
        bias = None if (mask.seq_lens is None and q_len == 1) else xformers_bias(mask)
    q5 = q.view(batch, q_len, kv_heads, group, head_dim)
    k5 = k.unsqueeze(3).expand(batch, kv_len, kv_heads, group, head_dim)
    v5 = v.unsqueeze(3).expand(batch, kv_len, kv_heads, group, head_dim)
    out = memory_efficient_attention(q5, k5, v5, attn_bias=bias)
    return out.reshape(batch, q_len, heads, head_dim)


class AutoAttention:
    """``auto`` on CUDA: xFormers until it first raises, then SDPA with one warning naming why.

    The state is process-wide on purpose: a backend that failed once (e.g. a wheel built for
    another CUDA) would fail again, and every model in the process should fall back together.
    """

    def __init__(self) -> None:
        self.failure: str | None = None

    def fall_back(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            warnings.warn(
                f"attention_backend='auto': xFormers failed ({reason}); using torch SDPA from now on. "
                "Set attention_backend='sdpa' to silence this, or 'xformers' to make it an error.",
                RuntimeWarning, stacklevel=3,
            )

    def __call__(
        self,
        q: Float[Tensor, "batch q_len heads head_dim"],
        k: Float[Tensor, "batch kv_len kv_heads head_dim"],
        v: Float[Tensor, "batch kv_len kv_heads head_dim"],
        mask: AttentionMask,
    ) -> Float[Tensor, "batch q_len heads head_dim"]:
        if self.failure is None:
            try:
                return xformers_attention(q, k, v, mask)
            except ValueError:  # our own input checks: a caller's bug, not the backend's
                raise
            except Exception as exc:  # NotImplementedError (shape/dtype), RuntimeError, ImportError
                self.fall_back(f"{type(exc).__name__}: {exc}")
        return sdpa_attention(q, k, v, mask)


#: The process-wide ``auto`` backend for CUDA devices.
AUTO_ATTENTION = AutoAttention()


def _on_cuda(device: torch.device | str | None) -> bool:
    return torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()


#: ``factory(device) -> backend`` for a device (``None``: CUDA if available), by name.
BackendFactory = Callable[[torch.device | str | None], AttentionBackend]

#: Attention backends by name (``ModelConfig.attention_backend``); entries are :data:`BackendFactory`.
ATTENTION_BACKENDS: Registry[BackendFactory] = Registry("attention backend", "attention_backend")


@ATTENTION_BACKENDS.register("sdpa")
def _sdpa(device: torch.device | str | None) -> AttentionBackend:
    return sdpa_attention


@ATTENTION_BACKENDS.register("xformers")
def _xformers(device: torch.device | str | None) -> AttentionBackend:
    if not _on_cuda(device):
        raise ValueError("attention backend 'xformers' needs CUDA and a working xformers install; use 'sdpa'")
    reason = xformers_unavailable_reason()
    if reason is not None:
        raise ValueError(f"attention backend 'xformers' cannot run ({reason}); use 'sdpa' or 'auto'")
    return xformers_attention


@ATTENTION_BACKENDS.register("auto")
def _auto(device: torch.device | str | None) -> AttentionBackend:
    """xFormers on CUDA (through :class:`AutoAttention`, which falls back to SDPA with a warning if
    xFormers is unavailable or fails), SDPA elsewhere."""
    if not _on_cuda(device):
        return sdpa_attention
    reason = xformers_unavailable_reason()
    if reason is not None:
        AUTO_ATTENTION.fall_back(reason)
    return sdpa_attention if AUTO_ATTENTION.failure is not None else AUTO_ATTENTION


def get_backend(name: str = "auto", device: torch.device | str | None = None) -> AttentionBackend:
    """The backend registered as ``name`` for ``device`` (see :data:`ATTENTION_BACKENDS`)."""
    return ATTENTION_BACKENDS.lookup(name)(device)
