"""scripts/setup.sh chooses the torch build (CPU pin, or CUDA torch + triton + xformers) correctly.

Run with ``VALUE_ROUTING_SETUP_DRY_RUN=1`` in a copy of the repository's root files, so it prints
the commands it would run and installs nothing.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_PIN = "pip install --quiet torch==2.13.0\n"
CUDA_PINS = "pip install --quiet torch==2.13.0 triton==3.7.1 xformers==0.0.35\n"
UNINSTALL = "pip uninstall --quiet -y torch triton xformers\n"
EDITABLE = "pip install --quiet -e .[dev,triton,xformers,docs,hf,eval,bench]\n"


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def setup(repo: Path, path: str | None = None, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VALUE_ROUTING_")}
    full_env.update(VALUE_ROUTING_SETUP_DRY_RUN="1", **env)
    if path is not None:
        full_env["PATH"] = path
    return subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=full_env, capture_output=True,
                          text=True, timeout=60)


def write_stamp(repo: Path, build: str | None) -> None:
    digest = hashlib.sha256((repo / "pyproject.toml").read_bytes() + (repo / "scripts" / "setup.sh").read_bytes())
    (repo / ".venv").mkdir(exist_ok=True)
    stamp = digest.hexdigest() if build is None else f"{digest.hexdigest()} {build}"
    (repo / ".venv" / ".value_routing-installed").write_text(stamp + "\n")


def test_cpu_keeps_the_torch_pin_and_installs_no_cuda_packages(repo):
    proc = setup(repo, VALUE_ROUTING_DEVICE="cpu")
    assert proc.returncode == 0, proc.stderr
    assert "torch for cpu" in proc.stderr
    assert CPU_PIN in proc.stdout and EDITABLE in proc.stdout
    assert proc.stdout.index(CPU_PIN) < proc.stdout.index(EDITABLE)  # pinned before the extras
    assert "xformers==" not in proc.stdout and "triton==" not in proc.stdout and UNINSTALL not in proc.stdout


def test_cuda_switch_installs_cuda_torch_with_matching_triton_and_xformers(repo):
    proc = setup(repo, VALUE_ROUTING_DEVICE="cuda")
    assert proc.returncode == 0, proc.stderr
    assert "torch for cuda (VALUE_ROUTING_DEVICE)" in proc.stderr
    assert CUDA_PINS in proc.stdout and CPU_PIN not in proc.stdout
    assert proc.stdout.index(CUDA_PINS) < proc.stdout.index(EDITABLE)


def test_an_nvidia_driver_selects_cuda(repo, tmp_path_factory):
    fake_bin = tmp_path_factory.mktemp("bin")
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    proc = setup(repo, path=f"{fake_bin}:{os.environ['PATH']}")
    assert "torch for cuda (nvidia-smi found)" in proc.stderr and CUDA_PINS in proc.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists(),
                    reason="this machine has an NVIDIA driver")
def test_no_driver_selects_cpu(repo):
    proc = setup(repo)
    assert "torch for cpu (no NVIDIA driver found)" in proc.stderr and CPU_PIN in proc.stdout


@pytest.mark.parametrize(
    "stamp, device, expected",
    [
        ("cpu ", "cpu", ""),  # up to date: nothing to do
        ("cuda ", "cuda", ""),
        ("cpu ", "cuda", UNINSTALL + CUDA_PINS),  # a switch removes the other build first
        ("cuda ", "cpu", UNINSTALL + CPU_PIN),
        (None, "cpu", CPU_PIN),  # a stamp from before builds were recorded: that install was cpu
        (None, "cuda", UNINSTALL + CUDA_PINS),
    ],
)
def test_the_stamp_records_the_build_and_a_switch_reinstalls_torch(repo, stamp, device, expected):
    write_stamp(repo, stamp)
    proc = setup(repo, VALUE_ROUTING_DEVICE=device)
    assert proc.returncode == 0, proc.stderr
    torch_lines = [line.split(" -m ", 1)[1] for line in proc.stdout.splitlines() if " torch" in line]
    assert "".join(f"{line}\n" for line in torch_lines) == expected
    if not expected:
        assert "pip" not in proc.stdout


def test_a_torch_index_is_passed_to_the_torch_install(repo):
    proc = setup(repo, VALUE_ROUTING_DEVICE="cuda", VALUE_ROUTING_TORCH_INDEX="file:///wheels/cu128")
    assert "pip install --quiet --index-url file:///wheels/cu128 torch==2.13.0 triton==3.7.1 xformers==0.0.35" in proc.stdout


def test_an_unknown_device_is_rejected_naming_the_variable(repo):
    proc = setup(repo, VALUE_ROUTING_DEVICE="gpu")
    assert proc.returncode == 2
    assert "VALUE_ROUTING_DEVICE must be one of cpu, cuda, auto; got 'gpu'" in proc.stderr
    assert "pip" not in proc.stdout
