"""``python -m recipes.tools.doctor`` on CPU: the report, skipped CUDA checks, failing checks.

Compile checks use ``--compile-backend aot_eager`` and one strategy here (inductor takes up to a
minute per strategy on two cores); the Triton checks run for real through the interpreter in a
subprocess, since ``TRITON_INTERPRET`` must be set before Triton is imported (fp32 and fp16 only:
bf16 through the interpreter is covered by tests/_kernels_interpret.py).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes.tools import doctor, doctor_checks
from recipes.tools.doctor_checks import Check, DoctorConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--strategies", "satformer", "--compile-backend", "aot_eager"]


def _report(path: Path) -> dict:
    report = json.loads(path.read_text())
    report["by_name"] = {(r["name"], r["dtype"]): r for r in report["results"]}
    return report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only machine reports")
def test_cpu_report_runs_what_it_can_and_lists_cuda_checks_as_skipped(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = doctor.main([*FAST, "--skip", "bench", "--json", str(out)])
    assert code == 0
    report = _report(out)
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cuda_available"] is False
    assert env["xformers_usable"] is False and "CUDA" in env["xformers_reason"]
    by_name = report["by_name"]
    cuda_only = [r for r in report["results"] if r["name"].startswith(("attention/", "kernels/"))]
    assert len(cuda_only) == 5 * 3 + 2 * 3  # every attention case and kernel, in fp32/bf16/fp16
    for r in cuda_only:
        assert r["status"] == "skip" and r["reason"] and r["max_error"] is None
    assert any("--triton-interpret" in r["reason"] for r in cuda_only)
    for name, dtype in (("compile/satformer", "fp32"), ("autocast/satformer", "bf16"), ("decode/satformer", "fp32")):
        r = by_name[(name, dtype)]
        assert r["status"] == "pass" and 0 <= r["max_error"] <= r["tolerance"], r
    assert report["failed"] == []
    printed = capsys.readouterr().out
    assert "SKIP   attention/gqa" in printed and "PASS   decode/satformer" in printed
    assert "0 fail" in printed


def test_a_failing_or_crashing_check_makes_the_exit_status_nonzero(tmp_path):
    def too_far(cfg, dtype):
        return 0.5, 1e-3, {}

    def crashes(cfg, dtype):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")

    checks = [Check("demo/too-far", "fp32", too_far), Check("demo/crashes", "bf16", crashes),
              Check("demo/fine", "fp32", lambda cfg, dtype: (0.0, 1e-6, {}))]
    out = tmp_path / "report.json"
    assert doctor.main(["--device", "cpu", "--json", str(out)], checks=checks) == 1
    report = _report(out)
    assert report["failed"] == ["demo/too-far", "demo/crashes"]
    assert report["by_name"][("demo/too-far", "fp32")]["reason"] == "error above tolerance"
    assert "illegal memory access" in report["by_name"][("demo/crashes", "bf16")]["reason"]
    assert doctor.main(["--device", "cpu", "--only", "demo/fine"], checks=checks) == 0


def test_a_compiled_step_that_disagrees_with_eager_fails_the_compile_check(monkeypatch):
    """A broken compiled path (here: a loss off by 1%) is caught by comparing with eager."""
    real_compile = torch.compile

    def wrong_compile(fn, **kwargs):
        compiled = real_compile(fn, **kwargs)
        return lambda *args: compiled(*args) * 1.01

    monkeypatch.setattr(torch, "compile", wrong_compile)
    cfg = DoctorConfig(device="cpu", compile_backend="aot_eager", strategies=("baseline",))
    check = next(c for c in doctor_checks.default_checks(cfg) if c.name == "compile/baseline")
    result = doctor.run_check(check, cfg)
    assert result.status == "fail" and result.max_error == pytest.approx(0.01, rel=1e-3)


def test_bench_check_measures_satformer_against_baseline():
    cfg = DoctorConfig(device="cpu", bench_rounds=2, bench_batch=1, bench_seq_len=16)
    result = doctor.run_check(Check("bench/satformer-vs-baseline", "fp32", doctor_checks.bench_check), cfg)
    assert result.status == "pass" and math.isnan(result.tolerance)
    d = result.details
    assert d["tokens_per_s_ratio"] > 0 and d["peak_memory_ratio"] > 1  # SATFormer adds W_α and V1
    assert (d["size"], d["batch"], d["seq_len"], d["rounds"]) == ("tiny", 1, 16, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter path is the CPU stand-in")
def test_triton_interpret_runs_the_kernel_checks_on_cpu(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "kernels.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)  # the doctor sets it itself, in a subprocess
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.tools.doctor", "--device", "cpu", "--triton-interpret",
         "--only", "kernels", "--dtypes", "fp32", "fp16", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _report(out)
    assert report["environment"]["triton_interpret"] is True
    assert [(r["name"], r["dtype"], r["status"]) for r in report["results"]] == [
        (f"kernels/{op}", dtype, "pass") for op in ("gate_mix", "depth_aggregate") for dtype in ("fp32", "fp16")
    ]  # bf16 through the interpreter: tests/_kernels_interpret.py
    for r in report["results"]:
        assert r["max_error"] <= r["tolerance"] == doctor_checks.KERNEL_TOL[r["dtype"]]


def test_select_and_config_validation():
    cfg = DoctorConfig(device="cpu", strategies=("baseline", "mudd"))
    names = [c.name for c in doctor.select(doctor_checks.default_checks(cfg), only=["decode", "compile/mudd"])]
    assert names == ["compile/mudd", "decode/baseline", "decode/mudd"]
    kept = doctor.select(doctor_checks.default_checks(cfg), skip=["attention"], dtypes=["bf16"])
    assert kept and all(c.dtype == "bf16" and not c.name.startswith("attention") for c in kept)
    with pytest.raises(ValueError, match="device must be one of"):
        DoctorConfig(device="tpu")
    with pytest.raises(ValueError, match="strategies must be"):
        DoctorConfig(strategies=("flash",))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' needs a CUDA device"):
            DoctorConfig(device="cuda")
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        DoctorConfig(compile_backend="cudagraphs")
    with pytest.raises(ValueError, match="status must be one of"):
        doctor.CheckResult("x", "cpu", "fp32", status="ok")
