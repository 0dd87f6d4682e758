"""Kernels: each op has a pure-PyTorch reference, Triton kernels and a dispatching function.

The dispatching functions (:func:`gate_mix`, :func:`depth_aggregate`) run the Triton custom
ops (``torch.ops.value_routing.*``, forward and backward) on CUDA tensors when Triton is
installed, and the references everywhere else (static depth weights, shared by every token, as
one GEMM: :func:`depth_aggregate_static`). ``*_triton`` call the ops on any device (CPU
through ``TRITON_INTERPRET=1``), which is how the tests check them without a GPU.
:func:`linear_cross_entropy` (LM head + loss in token chunks) is pure PyTorch on every device.
"""

from value_routing.kernels._triton_utils import HAS_TRITON
from value_routing.kernels.depth_aggregate import (
    depth_aggregate,
    depth_aggregate_reference,
    depth_aggregate_static,
    depth_aggregate_triton,
)
from value_routing.kernels.linear_cross_entropy import (
    LinearCrossEntropy,
    linear_cross_entropy,
    linear_cross_entropy_reference,
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
    "LinearCrossEntropy",
    "depth_aggregate",
    "depth_aggregate_reference",
    "depth_aggregate_static",
    "depth_aggregate_triton",
    "gate_activation",
    "gate_mix",
    "gate_mix_reference",
    "gate_mix_triton",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
]
