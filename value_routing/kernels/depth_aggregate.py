"""Weighted aggregation over a preallocated buffer of per-layer states.

Dense strategies keep every layer's output in one buffer ``states[depth, batch, seq, dim]``
written once per layer, and aggregate over a *view* of its first ``n`` slots instead of
stacking tensors each layer. Weights are either static (one per slot and stream) or dynamic
(per token). This module holds the pure-PyTorch reference, the Triton kernels (float32
accumulation, float32/bfloat16/float16 states, weights of any float dtype), the
``value_routing::depth_aggregate`` custom op with its autograd formula, and the dispatching
function :func:`depth_aggregate`.

Backward, with ``g[s, b, t]`` the output gradient::

    dstates[j, b, t] = Σ_s w[b, t, s, j] · g[s, b, t]
    dw[b, t, s, j]   = ⟨g[s, b, t], states[j, b, t]⟩   (summed over broadcast batch/seq)
"""

from __future__ import annotations

import torch

from value_routing.kernels._triton_utils import HAS_TRITON, next_power_of_2, require_triton, tl, triton, use_kernel
from value_routing.typing import Float, Tensor, shapecheck


@shapecheck
def depth_aggregate_reference(
    states: Float[Tensor, "depth batch seq dim"],
    weights: Float[Tensor, "#batch #seq streams depth"],
) -> Float[Tensor, "streams batch seq dim"]:
    """Reference: ``out[s, b, t] = Σ_j weights[b, t, s, j] · states[j, b, t]``.

    Static weights are passed expanded to ``(1, 1, streams, depth)`` or ``(batch, seq, ...)``
    views; broadcasting over batch and seq is allowed.
    """
    return torch.einsum("btsj,jbtd->sbtd", weights.to(states.dtype), states)


def check_depth_aggregate_inputs(states: Tensor, weights: Tensor) -> None:
    """Raise a ValueError naming the offending argument if the shapes do not fit together."""
    if states.ndim != 4:
        raise ValueError(f"states must have shape (depth, batch, seq, dim), got {tuple(states.shape)}")
    depth, batch, seq, _ = states.shape
    if (
        weights.ndim != 4
        or weights.shape[0] not in (1, batch)
        or weights.shape[1] not in (1, seq)
        or weights.shape[3] != depth
    ):
        raise ValueError(
            f"weights must have shape (batch or 1, seq or 1, streams, depth) = ({batch}|1, {seq}|1, streams, "
            f"{depth}), got {tuple(weights.shape)}"
        )
    if not weights.is_floating_point():
        raise ValueError(f"weights must be floating point, got {weights.dtype}")


def depth_aggregate(
    states: Float[Tensor, "depth batch seq dim"],
    weights: Float[Tensor, "#batch #seq streams depth"],
) -> Float[Tensor, "streams batch seq dim"]:
    """Dispatch the depth aggregation: the Triton op for CUDA states of a kernel dtype, else the reference."""
    check_depth_aggregate_inputs(states, weights)
    if use_kernel(states) and weights.device == states.device:
        return torch.ops.value_routing.depth_aggregate(states, weights)
    if is_static(weights):
        return depth_aggregate_static(states, weights)
    return depth_aggregate_reference(states, weights)


def is_static(weights: Tensor) -> bool:
    """Whether ``weights`` is shared by every token: shape ``(1, 1, streams, depth)``."""
    return weights.shape[0] == 1 and weights.shape[1] == 1


def depth_aggregate_static(
    states: Float[Tensor, "depth batch seq dim"],
    weights: Float[Tensor, "1 1 streams depth"],
) -> Float[Tensor, "streams batch seq dim"]:
    """The reference for weights shared by every token, as one GEMM.

    ``(streams, depth) @ (depth, batch·seq·dim)``: the flattened states are a view whenever each
    slot is contiguous (slot views of a buffer are, with any slot step), so nothing is copied;
    the einsum of the reference instead expands the weights per token.
    """
    out = weights[0, 0].to(states.dtype) @ states.flatten(1)
    return out.view(weights.shape[2], *states.shape[1:])


def depth_aggregate_triton(
    states: Float[Tensor, "depth batch seq dim"],
    weights: Float[Tensor, "#batch #seq streams depth"],
) -> Float[Tensor, "streams batch seq dim"]:
    """The Triton custom op on any device (CPU needs ``TRITON_INTERPRET=1``); for tests."""
    require_triton("depth_aggregate_triton")
    check_depth_aggregate_inputs(states, weights)
    return torch.ops.value_routing.depth_aggregate(states, weights)


def _weight_strides(weights: Tensor) -> tuple[int, int, int, int]:
    """Strides of ``weights`` with broadcast (size-1) batch/seq axes read with stride 0."""
    s_b, s_t, s_s, s_j = weights.stride()
    return (0 if weights.shape[0] == 1 else s_b), (0 if weights.shape[1] == 1 else s_t), s_s, s_j


def _block_d(dim: int) -> int:
    return min(next_power_of_2(dim), 1024)


if HAS_TRITON:

    @triton.jit
    def _depth_aggregate_fwd_kernel(
        x_ptr, w_ptr, out_ptr, depth, seq, streams, dim,
        sx_j, sx_b, sx_t, sx_d, sw_b, sw_t, sw_s, sw_j,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """One program: one token, BLOCK_D channels, all streams; ``out`` is contiguous."""
        tok = tl.program_id(0).to(tl.int64)
        b, t = tok // seq, tok % seq
        s = tl.arange(0, BLOCK_S)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        s_ok, d_ok = s < streams, d < dim
        x_ptrs = x_ptr + b * sx_b + t * sx_t + d * sx_d
        w_ptrs = w_ptr + b * sw_b + t * sw_t + s * sw_s
        acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
        for _ in range(depth):
            x = tl.load(x_ptrs, mask=d_ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=s_ok, other=0.0).to(tl.float32)
            acc += w[:, None] * x[None, :]
            x_ptrs += sx_j
            w_ptrs += sw_j
        n_tokens = tl.num_programs(0).to(tl.int64)
        o = (s * n_tokens * dim)[:, None] + (tok * dim + d)[None, :]
        tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=s_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _depth_aggregate_bwd_kernel(
        x_ptr, w_ptr, g_ptr, dx_ptr, dw_ptr, depth, seq, streams, dim,
        sx_j, sx_b, sx_t, sx_d, sw_b, sw_t, sw_s, sw_j, sg_s, sg_b, sg_t, sg_d,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """One program: one token. ``dx`` is contiguous, ``dw`` is (batch, seq, streams, depth) float32."""
        tok = tl.program_id(0).to(tl.int64)
        b, t = tok // seq, tok % seq
        n_tokens = tl.num_programs(0).to(tl.int64)
        s = tl.arange(0, BLOCK_S)
        s_ok = s < streams
        x_row = x_ptr + b * sx_b + t * sx_t
        w_ptrs = w_ptr + b * sw_b + t * sw_t + s * sw_s
        for j in range(depth):
            w = tl.load(w_ptrs, mask=s_ok, other=0.0).to(tl.float32)
            dw = tl.zeros((BLOCK_S,), dtype=tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                d_ok = d < dim
                g_offs = (s * sg_s)[:, None] + (b * sg_b + t * sg_t + d * sg_d)[None, :]
                g = tl.load(g_ptr + g_offs, mask=s_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
                x = tl.load(x_row + d * sx_d, mask=d_ok, other=0.0).to(tl.float32)
                dx = tl.sum(w[:, None] * g, axis=0)
                tl.store(dx_ptr + (j * n_tokens + tok) * dim + d, dx.to(dx_ptr.dtype.element_ty), mask=d_ok)
                dw += tl.sum(g * x[None, :], axis=1)
            tl.store(dw_ptr + (tok * streams + s) * depth + j, dw, mask=s_ok)
            x_row += sx_j
            w_ptrs += sw_j

    @torch.library.custom_op("value_routing::depth_aggregate", mutates_args=())
    def _depth_aggregate_op(states: Tensor, weights: Tensor) -> Tensor:
        depth, batch, seq, dim = states.shape
        streams = weights.shape[2]
        out = torch.empty((streams, batch, seq, dim), dtype=states.dtype, device=states.device)
        if out.numel() == 0 or depth == 0:
            return out.zero_()
        block_d = _block_d(dim)
        _depth_aggregate_fwd_kernel[(batch * seq, triton.cdiv(dim, block_d))](
            states, weights, out, depth, seq, streams, dim, *states.stride(), *_weight_strides(weights),
            BLOCK_S=next_power_of_2(streams), BLOCK_D=block_d,
        )
        return out

    @_depth_aggregate_op.register_fake
    def _(states, weights):
        return states.new_empty((weights.shape[2], *states.shape[1:]))

    @torch.library.custom_op("value_routing::depth_aggregate_backward", mutates_args=())
    def _depth_aggregate_backward_op(grad: Tensor, states: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        depth, batch, seq, dim = states.shape
        streams = weights.shape[2]
        dstates = torch.empty(states.shape, dtype=states.dtype, device=states.device)
        dw = torch.zeros((batch, seq, streams, depth), dtype=torch.float32, device=states.device)
        if states.numel() == 0 or streams == 0:
            return dstates.zero_(), dw.sum_to_size(weights.shape).to(weights.dtype)
        _depth_aggregate_bwd_kernel[(batch * seq,)](
            states, weights, grad, dstates, dw, depth, seq, streams, dim,
            *states.stride(), *_weight_strides(weights), *grad.stride(),
            BLOCK_S=next_power_of_2(streams), BLOCK_D=_block_d(dim),
        )
        return dstates, dw.sum_to_size(weights.shape).to(weights.dtype)

    @_depth_aggregate_backward_op.register_fake
    def _(grad, states, weights):
        return states.new_empty(states.shape), weights.new_empty(weights.shape)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad):
        states, weights = ctx.saved_tensors
        return _depth_aggregate_backward_op(grad, states, weights)

    _depth_aggregate_op.register_autograd(_backward, setup_context=_setup_context)
