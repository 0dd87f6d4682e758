"""Weighted aggregation over a preallocated buffer of per-layer states.

Dense strategies keep every layer's output in one buffer ``states[depth, batch, seq, dim]``
written once per layer, and aggregate over a *view* of its first ``n`` slots instead of
stacking tensors each layer. Weights are either static (one per slot and stream) or dynamic
(per token). This module holds the pure-PyTorch reference and the dispatching function.
"""

from __future__ import annotations

import torch

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


def depth_aggregate(
    states: Float[Tensor, "depth batch seq dim"],
    weights: Float[Tensor, "#batch #seq streams depth"],
) -> Float[Tensor, "streams batch seq dim"]:
    """Dispatch the depth aggregation to the fastest implementation available."""
    return depth_aggregate_reference(states, weights)
