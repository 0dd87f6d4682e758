"""User-space CPU cycles and instructions of this process, from Linux hardware counters.

Wall-clock time on a shared machine moves with whatever else runs; the instructions a step
retires do not, and its cycles count only while it runs. :mod:`recipes.bench.step` reports both
beside wall time on CPU as a contention-robust cross-check. Counters are opened with
``perf_event_open`` (``exclude_kernel``, so ``perf_event_paranoid <= 2`` suffices) and
``inherit``, so threads started *after* :func:`process_counters` is first called (torch's
intra-op pool) are counted too; cycles then include time worker threads spend spinning.
Where counters are unavailable (not Linux, no PMU in the VM, stricter paranoia) the functions
return ``None`` and the bench leaves those columns out.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

_SYSCALL = {"x86_64": 298, "aarch64": 241}
_EXCLUDE_KERNEL, _EXCLUDE_HV, _INHERIT = 1 << 5, 1 << 6, 1 << 1


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("_reserved", ctypes.c_uint64 * 8),
    ]


class Counters:
    """Open file descriptors of the cycles and instructions counters."""

    def __init__(self, fds: tuple[int, int]) -> None:
        self.fds = fds

    def read(self) -> tuple[int, int]:
        """``(cycles, instructions)`` so far."""
        return tuple(struct.unpack("q", os.read(fd, 8))[0] for fd in self.fds)  # type: ignore[return-value]


def _open(config: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _PerfEventAttr(type=0, size=112, config=config, flags=_EXCLUDE_KERNEL | _EXCLUDE_HV | _INHERIT)
    fd = libc.syscall(_SYSCALL[platform.machine()], ctypes.byref(attr), 0, -1, -1, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "perf_event_open failed")
    return fd


_COUNTERS: list[Counters | None] = []


def process_counters() -> Counters | None:
    """The process's counters (opened on first call), or ``None`` where unavailable."""
    if not _COUNTERS:
        counters = None
        if platform.system() == "Linux" and platform.machine() in _SYSCALL:
            try:
                counters = Counters((_open(0), _open(1)))  # PERF_COUNT_HW_CPU_CYCLES, _INSTRUCTIONS
                a, b = counters.read(), counters.read()
                if a == b == (0, 0):  # a VM without a virtual PMU opens counters that never count
                    counters = None
            except (OSError, AttributeError):
                counters = None
        _COUNTERS.append(counters)
    return _COUNTERS[0]
