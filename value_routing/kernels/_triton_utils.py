"""What the Triton kernels share: whether Triton is importable and tile-size helpers.

Triton is an optional dependency (``pip install value_routing[triton]``). Without it every
dispatching function runs its pure-PyTorch reference. With ``TRITON_INTERPRET=1`` set before
Triton is first imported, the kernels run on CPU tensors through Triton's interpreter, which
is how the test-suite checks them on machines without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

#: Whether Triton kernels run through the CPU interpreter (read once, like Triton does).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Input dtypes the kernels load and store; the arithmetic is always float32.
KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

#: Elements one program keeps in registers per tile (a power of two).
TILE_ELEMENTS = 4096


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (``>= 1``)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def use_kernel(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernel should run: Triton present, CUDA tensors, a kernel dtype.

    All tensors must share one device and one dtype; anything else takes the reference path.
    """
    first = tensors[0]
    return (
        HAS_TRITON
        and first.is_cuda
        and first.dtype in KERNEL_DTYPES
        and all(t.device == first.device and t.dtype == first.dtype for t in tensors)
    )


def require_triton(op: str) -> None:
    """Raise a RuntimeError naming ``op`` when Triton is not installed."""
    if not HAS_TRITON:
        raise RuntimeError(f"{op} needs Triton: pip install 'value_routing[triton]'")
