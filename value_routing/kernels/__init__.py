"""Kernels: each op has a pure-PyTorch reference, Triton kernels and a dispatching function.

The dispatching functions (:func:`gate_mix`, :func:`depth_aggregate`) run the Triton custom
ops (``torch.ops.value_routing.*``, forward and backward) on CUDA tensors when Triton is
installed, and the references everywhere else (static depth weights, shared by every token, as
one GEMM: :func:`depth_aggregate_static`). ``*_triton`` call the ops on any device (CPU
through ``TRITON_INTERPRET=1``), which is how the tests check them without a GPU.
"""

from value_routing.kernels._triton_utils import HAS_TRITON
from value_routing.kernels.depth_aggregate import (
    depth_aggregate,
    depth_aggregate_reference,
    depth_aggregate_static,
    depth_aggregate_triton,
)
from value_routing.kernels.gate_mix import (
    GATE_ACTIVATIONS,
    gate_activation,
    gate_mix,
    gate_mix_reference,
    gate_mix_triton,
)

__all__ = [
    "GATE_ACTIVATIONS",
    "HAS_TRITON",
    "depth_aggregate",
    "depth_aggregate_reference",
    "depth_aggregate_static",
    "depth_aggregate_triton",
    "gate_activation",
    "gate_mix",
    "gate_mix_reference",
    "gate_mix_triton",
]
