r"""The per-layer states of the dense strategies, kept in one write-once buffer.

DenseFormer and MUDDFormer aggregate over the embedding and every block output so far,
``out[s] = Σ_j w[..., s, j] · X_j``. Stacking the ``X_j`` anew after every layer copies
``O(L²)`` states and keeps every stack alive for backward. Instead, :func:`init_depth_states`
allocates one buffer ``(slots, batch, seq, dim)``; :func:`append_depth_state` writes each state
into its slot once; :func:`aggregate_depth_states` runs
:func:`~value_routing.kernels.depth_aggregate` over a *view* of the filled slots.

Autograd needs care: a plain ``buffer[j] = x`` followed by an aggregation over ``buffer[:n]``
saves that view for backward, and the next write bumps the buffer's version counter, so
backward fails. Two small autograd functions keep the buffer out of autograd's bookkeeping:

* ``_WriteSlot`` copies ``x`` into its slot and returns a *handle*: a storage-free tensor of
  ``x``'s shape whose gradient is handed to ``x``. ``x`` itself is not kept alive.
* ``_AggregateSlots`` takes the buffer view, the weights and the handles of the slots it
  reads; backward returns ``dstates`` to the handles and ``dweights`` from the view. The view
  is held on ``ctx`` (not ``save_for_backward``): slots are written once and never change
  afterwards, so what backward reads is exactly what forward read.

Both trace under ``torch.compile(fullgraph=True)``, but a compiled graph cannot update the
buffer in place: functionalization turns every slot write into a copy of the buffer while
backward still holds views of the older versions. So when the states are created *inside*
a compiled region (:func:`torch.compiler.is_compiling`), ``impl="buffer"`` keeps them in a
tuple and aggregates with an unrolled weighted sum ``Σ_j w_j · X_j``, which inductor fuses
into one kernel per aggregation (each state read once, nothing stacked, nothing copied; its
backward saves only the states, which are alive anyway).

``impl="stack"`` keeps the states in a tuple and stacks them on every aggregation: the naive
variant benchmarks compare against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from value_routing.kernels.depth_aggregate import depth_aggregate, is_static
from value_routing.typing import Float, Tensor

#: Storage of the per-layer states: one preallocated buffer, or a torch.stack per aggregation.
DEPTH_IMPLS: tuple[str, ...] = ("buffer", "stack")


def check_impl(impl: str) -> str:
    """Return ``impl`` if it names a storage, else raise a ValueError naming the field."""
    if impl not in DEPTH_IMPLS:
        raise ValueError(f"impl must be one of {DEPTH_IMPLS}, got {impl!r}")
    return impl


class DepthStates(NamedTuple):
    """States written so far: ``len(handles)`` filled slots.

    ``form`` is how they are held: a write-once buffer, a tuple stacked per aggregation, or a
    tuple summed per aggregation (``impl="buffer"`` inside torch.compile). For ``form="buffer"``, ``buffer`` is ``(slots, batch, seq, dim)`` and ``handles`` are the
    autograd handles of the slots; for ``"stack"`` and ``"sum"``, ``buffer`` is ``None`` and
    ``handles`` are the states themselves.
    """

    buffer: Float[Tensor, "slots batch seq dim"] | None
    handles: tuple[Tensor, ...]
    form: str = "buffer"


class _WriteSlot(torch.autograd.Function):
    """``buffer[slot] = x``; returns a storage-free handle that routes gradients to ``x``."""

    @staticmethod
    def forward(ctx, buffer: Tensor, x: Tensor, slot: int) -> Tensor:
        buffer[slot] = x
        return x.new_zeros(()).expand_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return None, grad, None


class _AggregateSlots(torch.autograd.Function):
    """``depth_aggregate(states, weights)`` with gradients to the slot handles."""

    @staticmethod
    def forward(ctx, states: Tensor, weights: Tensor, *handles: Tensor) -> Tensor:
        ctx.save_for_backward(weights)
        ctx.states = states  # write-once slots: safe to read in backward (see module docstring)
        return depth_aggregate(states, weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (weights,) = ctx.saved_tensors
        states = ctx.states
        grad_weights = None
        if ctx.needs_input_grad[1]:
            states_g = states.to(grad.dtype)
            if is_static(weights):  # one GEMM, as in the forward
                grad_weights = (grad.flatten(1) @ states_g.flatten(1).T).view(weights.shape)
            else:
                grad_weights = torch.einsum("sbtd,jbtd->btsj", grad, states_g).sum_to_size(weights.shape)
            grad_weights = grad_weights.to(weights.dtype)
        grad_states = depth_aggregate(grad, weights.transpose(-1, -2))  # (depth, batch, seq, dim)
        return None, grad_weights, *grad_states.unbind(0)


class _AggregateScaledSlots(torch.autograd.Function):
    """``depth_aggregate(states · scales, weights)`` with a per-slot channel scale; saves no product."""

    @staticmethod
    def forward(ctx, states: Tensor, weights: Tensor, scales: Tensor, *handles: Tensor) -> Tensor:
        ctx.save_for_backward(weights, scales)
        ctx.states = states  # write-once slots, as in _AggregateSlots
        return depth_aggregate(states * scales[:, None, None, :].to(states.dtype), weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        weights, scales = ctx.saved_tensors
        states = ctx.states.to(grad.dtype)
        back = depth_aggregate(grad, weights.transpose(-1, -2))  # Σ_s w[s, j] g[s]: (depth, batch, seq, dim)
        grad_weights = grad_scales = None
        if ctx.needs_input_grad[1]:
            scaled = states * scales[:, None, None, :].to(grad.dtype)
            grad_weights = torch.einsum("sbtd,jbtd->btsj", grad, scaled).sum_to_size(weights.shape).to(weights.dtype)
        if ctx.needs_input_grad[2]:
            grad_scales = (back * states).sum((1, 2)).to(scales.dtype)
        grad_states = back * scales[:, None, None, :].to(grad.dtype)
        return None, grad_weights, grad_scales, *grad_states.unbind(0)


def init_depth_states(x0: Float[Tensor, "batch seq dim"], slots: int, impl: str = "buffer") -> DepthStates:
    """States holding ``x0`` in slot 0, with room for ``slots`` states in all."""
    if impl == "stack" or torch.compiler.is_compiling():
        return DepthStates(None, (x0,), "stack" if impl == "stack" else "sum")
    buffer = x0.new_empty((slots, *x0.shape))
    return DepthStates(buffer, (_WriteSlot.apply(buffer, x0, 0),))


def append_depth_state(states: DepthStates, x: Float[Tensor, "batch seq dim"]) -> DepthStates:
    """``states`` with ``x`` written into the next slot."""
    if states.buffer is None:
        return states._replace(handles=(*states.handles, x))
    slot = len(states.handles)
    return states._replace(handles=(*states.handles, _WriteSlot.apply(states.buffer, x, slot)))


def aggregate_depth_states(
    states: DepthStates,
    weights: Float[Tensor, "#batch #seq streams depth"],
    start: int = 0,
    step: int = 1,
    scales: Float[Tensor, "depth dim"] | None = None,
) -> Float[Tensor, "streams batch seq dim"]:
    """``Σ_j weights[..., s, j] · X_{start + j·step}`` over the filled slots ``start, start+step, …``.

    With ``scales``, state ``j`` is first multiplied channel-wise by ``scales[j]`` (MUDDFormer's
    learned pre-aggregation norm scales); the buffer form keeps no scaled copy for backward.
    """
    n = len(states.handles)
    handles = states.handles[start:n:step]
    if scales is not None and states.form != "buffer":
        handles = tuple(h * g.to(h.dtype) for h, g in zip(handles, scales.unbind(0)))
    if states.form == "stack":
        return depth_aggregate(torch.stack(handles), weights)
    if states.form == "sum":
        return weighted_sum(handles, weights)
    if scales is not None:
        return _AggregateScaledSlots.apply(states.buffer[start:n:step], weights, scales, *handles)
    return _AggregateSlots.apply(states.buffer[start:n:step], weights, *handles)


def weighted_sum(
    states: tuple[Tensor, ...], weights: Float[Tensor, "#batch #seq streams depth"]
) -> Float[Tensor, "streams batch seq dim"]:
    """``Σ_j weights[..., s, j] · states[j]`` unrolled over ``j``: the form inductor fuses."""
    w = weights.movedim(2, 0).to(states[0].dtype)  # (streams, #batch, #seq, depth)
    out = w[..., 0, None] * states[0]
    for j in range(1, len(states)):
        out = out + w[..., j, None] * states[j]
    return out
