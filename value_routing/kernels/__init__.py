"""Kernels: each op has a pure-PyTorch reference and a dispatching function."""

from value_routing.kernels.depth_aggregate import depth_aggregate, depth_aggregate_reference
from value_routing.kernels.gate_mix import (
    GATE_ACTIVATIONS,
    gate_activation,
    gate_mix,
    gate_mix_reference,
)

__all__ = [
    "GATE_ACTIVATIONS",
    "depth_aggregate",
    "depth_aggregate_reference",
    "gate_activation",
    "gate_mix",
    "gate_mix_reference",
]
