"""Fused selective-gate value mix: ``out = v + act(logits) * v1``.

``logits`` holds one gate logit per kv-head (``W_α h``); the gate broadcasts over
``head_dim``. This module holds the pure-PyTorch reference, the Triton kernels (forward and
backward, float32 arithmetic, float32/bfloat16/float16 I/O), the ``value_routing::gate_mix``
custom op with its autograd formula, and the dispatching function :func:`gate_mix`.

Backward, with ``g`` the output gradient, ``α = act(logits)`` and ``s = Σ_d g·v1``::

    dv = g,   dv1 = α·g,   dlogits = act'(logits)ᵀ s

where ``act'`` is elementwise except for the softmax activations, whose Jacobian couples
the heads of a token (``softmax``: ``dlogits = H·p·(s − Σ_h p·s)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from value_routing.kernels._triton_utils import (
    HAS_TRITON,
    TILE_ELEMENTS,
    next_power_of_2,
    require_triton,
    tl,
    triton,
    use_kernel,
)
from value_routing.typing import Float, Tensor, shapecheck

GATE_ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh", "identity", "softmax", "softmax_sigmoid")


def check_activation(act: str, field: str = "act") -> str:
    """Return ``act`` if it names a gate activation, else raise a ValueError naming ``field``."""
    if act not in GATE_ACTIVATIONS:
        raise ValueError(f"{field} must be one of {GATE_ACTIVATIONS}, got {act!r}")
    return act


def gate_activation(
    logits: Float[Tensor, "*batch heads"], act: str
) -> Float[Tensor, "*batch heads"]:
    """Map gate logits to gate values α.

    ``softmax`` normalises over the head axis and rescales by the number of heads so that a
    uniform gate equals 1; ``softmax_sigmoid`` multiplies that by an elementwise sigmoid.
    """
    if act == "relu":
        return F.relu(logits)
    if act == "sigmoid":
        return torch.sigmoid(logits)
    if act == "tanh":
        return torch.tanh(logits)
    if act == "identity":
        return logits
    heads = logits.shape[-1]
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least; keep float64
    if act == "softmax":
        return torch.softmax(wide, dim=-1).to(logits.dtype) * heads
    if act == "softmax_sigmoid":
        sm = torch.softmax(wide, dim=-1) * torch.sigmoid(wide)
        return (sm * heads).to(logits.dtype)
    raise ValueError(f"act must be one of {GATE_ACTIVATIONS}, got {act!r}")


@shapecheck
def gate_mix_reference(
    v: Float[Tensor, "batch seq kv_heads head_dim"],
    v1: Float[Tensor, "batch seq kv_heads head_dim"],
    logits: Float[Tensor, "batch seq kv_heads"],
    act: str,
) -> Float[Tensor, "batch seq kv_heads head_dim"]:
    """Reference: ``v + act(logits)[..., None] * v1``."""
    return v + gate_activation(logits, act).unsqueeze(-1) * v1


def check_gate_mix_inputs(v: Tensor, v1: Tensor, logits: Tensor, act: str) -> None:
    """Raise a ValueError naming the offending argument if the shapes or ``act`` are wrong."""
    if v.ndim != 4:
        raise ValueError(f"v must have shape (batch, seq, kv_heads, head_dim), got {tuple(v.shape)}")
    if v1.shape != v.shape:
        raise ValueError(f"v1 must have the shape of v {tuple(v.shape)}, got {tuple(v1.shape)}")
    if logits.shape != v.shape[:3]:
        raise ValueError(
            f"logits must have shape (batch, seq, kv_heads) = {tuple(v.shape[:3])}, got {tuple(logits.shape)}"
        )
    check_activation(act)


def gate_mix(
    v: Float[Tensor, "batch seq kv_heads head_dim"],
    v1: Float[Tensor, "batch seq kv_heads head_dim"],
    logits: Float[Tensor, "batch seq kv_heads"],
    act: str,
) -> Float[Tensor, "batch seq kv_heads head_dim"]:
    """Dispatch the gate mix: the Triton op for CUDA tensors of one kernel dtype, else the reference."""
    check_gate_mix_inputs(v, v1, logits, act)
    if use_kernel(v, v1, logits):
        return torch.ops.value_routing.gate_mix(v, v1, logits, act)
    return gate_mix_reference(v, v1, logits, act)


def gate_mix_triton(
    v: Float[Tensor, "batch seq kv_heads head_dim"],
    v1: Float[Tensor, "batch seq kv_heads head_dim"],
    logits: Float[Tensor, "batch seq kv_heads"],
    act: str,
) -> Float[Tensor, "batch seq kv_heads head_dim"]:
    """The Triton custom op on any device (CPU needs ``TRITON_INTERPRET=1``); for tests."""
    require_triton("gate_mix_triton")
    check_gate_mix_inputs(v, v1, logits, act)
    return torch.ops.value_routing.gate_mix(v, v1, logits, act)


def _tiles(v: Tensor) -> tuple[int, int, int, int]:
    """``(grid, BLOCK_T, BLOCK_H, BLOCK_D)``: one program covers all heads of BLOCK_T tokens."""
    batch, seq, heads, dim = v.shape
    block_h, block_d = next_power_of_2(heads), next_power_of_2(dim)
    block_t = min(max(TILE_ELEMENTS // (block_h * block_d), 1), next_power_of_2(batch * seq))
    return triton.cdiv(batch * seq, block_t), block_t, block_h, block_d


if HAS_TRITON:

    @triton.jit
    def _offsets(b, t, h, d, s_b, s_t, s_h, s_d):
        """Offsets of a (tokens, heads, dim) tile of a strided (batch, seq, heads, dim) tensor."""
        return (b * s_b + t * s_t)[:, None, None] + (h * s_h)[None, :, None] + (d * s_d)[None, None, :]

    @triton.jit
    def _softmax_heads(x, h_ok):
        x = tl.where(h_ok[None, :], x, float("-inf"))
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        return e / tl.sum(e, axis=1)[:, None]

    @triton.jit
    def _act(x, h_ok, heads, ACT: tl.constexpr):
        """α = act(x) on a (tokens, heads) float32 tile; ACT indexes GATE_ACTIVATIONS."""
        if ACT == 0:
            a = tl.maximum(x, 0.0)
        elif ACT == 1:
            a = tl.sigmoid(x)
        elif ACT == 2:
            a = 2.0 * tl.sigmoid(2.0 * x) - 1.0  # tanh
        elif ACT == 3:
            a = x
        elif ACT == 4:
            a = _softmax_heads(x, h_ok) * heads
        else:
            a = _softmax_heads(x, h_ok) * tl.sigmoid(x) * heads
        return a

    @triton.jit
    def _act_grad(x, s, h_ok, heads, ACT: tl.constexpr):
        """``act'(x)ᵀ s``: the logit gradient given ``s = dL/dα`` (float32 tiles)."""
        if ACT == 0:
            dx = tl.where(x > 0.0, s, 0.0)
        elif ACT == 1:
            sg = tl.sigmoid(x)
            dx = s * sg * (1.0 - sg)
        elif ACT == 2:
            th = 2.0 * tl.sigmoid(2.0 * x) - 1.0
            dx = s * (1.0 - th * th)
        elif ACT == 3:
            dx = s
        elif ACT == 4:
            p = _softmax_heads(x, h_ok)
            dx = heads * p * (s - tl.sum(p * s, axis=1)[:, None])
        else:
            p = _softmax_heads(x, h_ok)
            sg = tl.sigmoid(x)
            u = s * sg
            dx = heads * p * (u - tl.sum(p * u, axis=1)[:, None] + sg * (1.0 - sg) * s)
        return dx

    @triton.jit
    def _gate_mix_kernel(
        v_ptr, v1_ptr, x_ptr, out_ptr, dv1_ptr, dx_ptr,
        n_tokens, seq, heads, dim,
        sv_b, sv_t, sv_h, sv_d, s1_b, s1_t, s1_h, s1_d, sx_b, sx_t, sx_h,
        ACT: tl.constexpr, BACKWARD: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Forward: ``out = v + α·v1``. Backward (``v`` holds ``g``): ``dv1 = α·g``, ``dx``.

        Outputs are contiguous; ``out``/``dv1`` share ``v``-shaped, ``dx`` logits-shaped offsets.
        """
        tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        b, t = tok // seq, tok % seq
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, BLOCK_D)
        h_ok = h < heads
        th_ok = (tok < n_tokens)[:, None] & h_ok[None, :]
        mask = th_ok[:, :, None] & (d < dim)[None, None, :]
        x = tl.load(x_ptr + (b * sx_b + t * sx_t)[:, None] + (h * sx_h)[None, :], mask=th_ok, other=0.0)
        x = x.to(tl.float32)
        alpha = _act(x, h_ok, heads, ACT)
        v = tl.load(v_ptr + _offsets(b, t, h, d, sv_b, sv_t, sv_h, sv_d), mask=mask, other=0.0).to(tl.float32)
        v1 = tl.load(v1_ptr + _offsets(b, t, h, d, s1_b, s1_t, s1_h, s1_d), mask=mask, other=0.0).to(tl.float32)
        o = _offsets(b, t, h, d, seq * heads * dim, heads * dim, dim, 1)
        if BACKWARD:
            tl.store(dv1_ptr + o, (alpha[:, :, None] * v).to(dv1_ptr.dtype.element_ty), mask=mask)
            dx = _act_grad(x, tl.sum(v * v1, axis=2), h_ok, heads, ACT)
            tl.store(dx_ptr + (tok * heads)[:, None] + h[None, :], dx.to(dx_ptr.dtype.element_ty), mask=th_ok)
        else:
            tl.store(out_ptr + o, (v + alpha[:, :, None] * v1).to(out_ptr.dtype.element_ty), mask=mask)

    def _launch(v: Tensor, v1: Tensor, logits: Tensor, act: str, out: Tensor, dlogits: Tensor | None) -> None:
        """Forward writes ``out``; backward (``dlogits`` given, ``v`` holding ``g``) ``out = dv1``."""
        if v.numel() == 0:
            return
        grid, block_t, block_h, block_d = _tiles(v)
        batch, seq, heads, dim = v.shape
        _gate_mix_kernel[(grid,)](
            v, v1, logits, out, out, out if dlogits is None else dlogits, batch * seq, seq, heads, dim,
            *v.stride(), *v1.stride(), *logits.stride(),
            ACT=GATE_ACTIVATIONS.index(act), BACKWARD=dlogits is not None,
            BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D=block_d,
        )

    # An opaque custom op (not ``triton_op``) so its fake implementation never launches the
    # kernel: that keeps torch.compile(fullgraph=True) testable under the CPU interpreter.
    @torch.library.custom_op("value_routing::gate_mix", mutates_args=())
    def _gate_mix_op(v: Tensor, v1: Tensor, logits: Tensor, act: str) -> Tensor:
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        _launch(v, v1, logits, act, out, None)
        return out

    @_gate_mix_op.register_fake
    def _(v, v1, logits, act):
        return v.new_empty(v.shape)

    @torch.library.custom_op("value_routing::gate_mix_backward", mutates_args=())
    def _gate_mix_backward_op(grad: Tensor, v1: Tensor, logits: Tensor, act: str) -> tuple[Tensor, Tensor]:
        dv1 = torch.empty(v1.shape, dtype=v1.dtype, device=v1.device)
        dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        _launch(grad, v1, logits, act, dv1, dlogits)
        return dv1, dlogits

    @_gate_mix_backward_op.register_fake
    def _(grad, v1, logits, act):
        return v1.new_empty(v1.shape), logits.new_empty(logits.shape)

    def _setup_context(ctx, inputs, output):
        _, v1, logits, act = inputs
        ctx.save_for_backward(v1, logits)
        ctx.act = act

    def _backward(ctx, grad):
        v1, logits = ctx.saved_tensors
        dv1, dlogits = _gate_mix_backward_op(grad, v1, logits, ctx.act)
        return grad, dv1, dlogits, None

    _gate_mix_op.register_autograd(_backward, setup_context=_setup_context)
