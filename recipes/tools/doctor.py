"""Check this machine's fast paths against their references: ``python -m recipes.tools.doctor``.

The project's tests run on CPU; xFormers attention, the Triton kernels on a GPU, bf16 autocast
and compiled CUDA steps can only be checked where a GPU is. The doctor prints the environment
(torch, CUDA, device, xFormers and Triton: versions and whether each is usable), then runs every
check of :mod:`recipes.tools.doctor_checks` on the device — attention backends, kernels in
fp32/bf16/fp16, one compiled train step per strategy, a bf16 autocast step, KV-cache decode — each
with its max error, tolerance and pass/fail, and ends with a short SATFormer ÷ baseline tokens/s
and peak-memory measurement. A check that cannot run here is listed as skipped with the reason.

The exit status is 1 if any check failed. ``--json report.json`` writes the report for a bug
report. ``--triton-interpret`` re-runs the doctor with ``TRITON_INTERPRET=1`` so the kernel
checks run on CPU through Triton's interpreter. On CPU, compiling every strategy with inductor
takes minutes: ``--strategies satformer`` or ``--compile-backend aot_eager`` shortens it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch

from recipes.lm.cli import flags_of, positive_int, user_errors, writable
from recipes.tools.doctor_checks import COMPILE_BACKENDS, DTYPES, Check, DoctorConfig, Skipped, default_checks
from value_routing.attention import backends
from value_routing.attention.backends import xformers_unavailable_reason
from value_routing.kernels._triton_utils import HAS_TRITON, INTERPRET

STATUSES: tuple[str, ...] = ("pass", "fail", "skip")


@dataclass(frozen=True)
class CheckResult:
    """One line of the report; ``max_error`` and ``tolerance`` are NaN for a skipped check."""

    name: str
    device: str
    dtype: str
    status: str
    max_error: float = math.nan
    tolerance: float = math.nan
    reason: str = ""
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(cfg: DoctorConfig) -> dict[str, Any]:
    """What the report was produced on: versions, device and which optional backends can run."""
    cuda = torch.cuda.is_available()
    xformers_reason = xformers_unavailable_reason()
    if not HAS_TRITON:
        triton_reason = "not installed"
    elif cfg.device == "cpu" and not INTERPRET:
        triton_reason = "kernels need CUDA (or TRITON_INTERPRET=1 for the CPU interpreter)"
    else:
        triton_reason = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device": cfg.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else True,
        "xformers": _version("xformers"),
        "xformers_usable": xformers_reason is None,
        "xformers_reason": xformers_reason,
        "triton": _version("triton"),
        "triton_usable": triton_reason is None,
        "triton_reason": triton_reason,
        "triton_interpret": INTERPRET,
    }


def run_check(check: Check, cfg: DoctorConfig) -> CheckResult:
    """Run one check; a skip carries its reason, an exception is a failure naming it."""
    start = time.perf_counter()
    common = dict(name=check.name, device=cfg.device, dtype=check.dtype)
    try:
        error, tol, details = check.run(cfg, DTYPES[check.dtype])
    except Skipped as skip:
        return CheckResult(**common, status="skip", reason=str(skip))
    except Exception as exc:  # a crashing fast path is exactly what the doctor must report
        return CheckResult(**common, status="fail", reason=f"{type(exc).__name__}: {exc}",
                           seconds=time.perf_counter() - start)
    if math.isnan(tol):  # a measurement: it passed by producing its numbers
        ok, reason = True, "measured (no tolerance)"
    else:
        ok = math.isfinite(error) and error <= tol
        reason = "" if ok else "error above tolerance"
    return CheckResult(**common, status="pass" if ok else "fail", max_error=error, tolerance=tol,
                       reason=reason, seconds=time.perf_counter() - start, details=dict(details))


def select(
    checks: Sequence[Check], only: Sequence[str] = (), skip: Sequence[str] = (), dtypes: Sequence[str] = tuple(DTYPES)
) -> list[Check]:
    """The checks of ``dtypes`` whose name starts with one of ``only`` (all if empty) and with none of ``skip``."""
    return [c for c in checks if c.dtype in dtypes
            and (not only or any(c.name.startswith(p) for p in only)) and not any(c.name.startswith(p) for p in skip)]


def format_report(env: Mapping[str, Any], results: Sequence[CheckResult]) -> str:
    lines = ["environment:"] + [f"  {k:<19}{v}" for k, v in env.items()]
    lines.append(f"\n{'status':<7}{'check':<32}{'device':<7}{'dtype':<6}{'max error':>11}{'tol':>9}  reason")
    for r in results:
        err = "" if math.isnan(r.max_error) else f"{r.max_error:.2e}"
        tol = "" if math.isnan(r.tolerance) else f"{r.tolerance:.0e}"
        lines.append(f"{r.status.upper():<7}{r.name:<32}{r.device:<7}{r.dtype:<6}{err:>11}{tol:>9}  {r.reason}")
    for r in results:
        if r.name.startswith("bench/") and r.status == "pass":
            d = r.details
            lines.append(f"\nSATFormer ÷ baseline ({d['size']}, {d['batch']}×{d['seq_len']} tokens, {d['rounds']} "
                         f"interleaved rounds{', bf16 autocast' if d['amp_bf16'] else ''}): tokens/s "
                         f"{d['tokens_per_s_ratio']:.3f} (±{d['time_ratio_spread']:.3f} half-IQR of the time ratio), "
                         f"peak memory {d['peak_memory_ratio']:.3f}")
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    lines.append(f"\ndoctor: {counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip")
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def write_json(path: str, env: Mapping[str, Any], results: Sequence[CheckResult]) -> None:
    report = {"environment": dict(env), "results": [_json_value(asdict(r)) for r in results],
              "failed": [r.name for r in results if r.status == "fail"]}
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=DoctorConfig.device)
    p.add_argument("--json", type=writable("file"), metavar="PATH", help="write the report as JSON (attach it to a bug report)")
    p.add_argument("--only", nargs="+", default=[], metavar="PREFIX", help="run only checks whose name starts so")
    p.add_argument("--skip", nargs="+", default=[], metavar="PREFIX", help="leave out checks whose name starts so")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES), help="leave out other dtypes")
    p.add_argument("--strategies", nargs="+", default=list(DoctorConfig.strategies), choices=DoctorConfig.strategies,
                   help="strategies of the compile/autocast/decode checks")
    p.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default=DoctorConfig.compile_backend)
    p.add_argument("--bench-rounds", type=positive_int, default=DoctorConfig.bench_rounds)
    p.add_argument("--triton-interpret", action="store_true",
                   help="run the Triton kernels on CPU through Triton's interpreter (re-runs in a subprocess)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None, checks: Sequence[Check] | None = None) -> int:
    """Run the doctor; returns the exit status (``checks`` replaces the default list, for tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.triton_interpret and not INTERPRET:
        # TRITON_INTERPRET is read when Triton is first imported, which has already happened here.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        return subprocess.call([sys.executable, "-m", "recipes.tools.doctor", *argv], env=env)
    with user_errors(parser, flags_of(parser)):  # e.g. --device cuda without a CUDA device
        cfg = DoctorConfig(device=args.device, compile_backend=args.compile_backend,
                           strategies=tuple(args.strategies), bench_rounds=args.bench_rounds)
    env = environment(cfg)
    results = []
    for check in select(default_checks(cfg) if checks is None else checks, args.only, args.skip, args.dtypes):
        results.append(run_check(check, cfg))
        print(f"{results[-1].status:>4}  {check.name} [{check.dtype}]", file=sys.stderr, flush=True)
    # Whether attention_backend="auto" gave up on xFormers during the model checks, and why.
    env["auto_attention_fallback"] = backends.AUTO_ATTENTION.failure
    print(format_report(env, results))
    if args.json:
        write_json(args.json, env, results)
    return 1 if any(r.status == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
