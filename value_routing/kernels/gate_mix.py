"""Fused selective-gate value mix: ``out = v + act(logits) * v1``.

``logits`` holds one gate logit per kv-head (``W_α h``); the gate broadcasts over
``head_dim``. This module holds the pure-PyTorch reference and the dispatching function
:func:`gate_mix`; accelerated kernels register beside the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    if act == "softmax":
        return torch.softmax(logits.float(), dim=-1).to(logits.dtype) * heads
    if act == "softmax_sigmoid":
        sm = torch.softmax(logits.float(), dim=-1) * torch.sigmoid(logits.float())
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


def gate_mix(
    v: Float[Tensor, "batch seq kv_heads head_dim"],
    v1: Float[Tensor, "batch seq kv_heads head_dim"],
    logits: Float[Tensor, "batch seq kv_heads"],
    act: str,
) -> Float[Tensor, "batch seq kv_heads head_dim"]:
    """Dispatch the gate mix to the fastest implementation available for the inputs."""
    return gate_mix_reference(v, v1, logits, act)
