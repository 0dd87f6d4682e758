"""Kernel references vs written-out formulas, dispatch, input validation, compile.

The Triton kernels themselves run in ``tests/_kernels_interpret.py`` under Triton's CPU
interpreter, launched here in a subprocess (``TRITON_INTERPRET=1`` must be set before Triton
is first imported, which this shared pytest process has already done).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from value_routing.kernels import (
    GATE_ACTIVATIONS,
    depth_aggregate,
    depth_aggregate_reference,
    depth_aggregate_static,
    gate_mix,
    gate_mix_reference,
)
from value_routing.kernels._triton_utils import HAS_TRITON, next_power_of_2

ROOT = Path(__file__).resolve().parent.parent


def written_out_gate(logits: torch.Tensor, act: str) -> torch.Tensor:
    """act(logits) from the definitions, one head at a time."""
    heads = logits.shape[-1]
    sig = 1 / (1 + torch.exp(-logits))
    exp = torch.exp(logits)
    soft = exp / sum(exp[..., h : h + 1] for h in range(heads))
    return {
        "relu": torch.where(logits > 0, logits, torch.zeros_like(logits)),
        "sigmoid": sig,
        "tanh": (exp - 1 / exp) / (exp + 1 / exp),
        "identity": logits,
        "softmax": heads * soft,
        "softmax_sigmoid": heads * soft * sig,
    }[act]


@pytest.mark.parametrize("act", GATE_ACTIVATIONS)
def test_gate_mix_reference_and_dispatch_match_the_formula(act):
    v, v1 = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    logits = torch.randn(2, 3, 4, dtype=torch.float64)
    gate = written_out_gate(logits, act)
    want = torch.stack([v[:, :, h] + gate[:, :, h, None] * v1[:, :, h] for h in range(4)], dim=2)
    torch.testing.assert_close(gate_mix_reference(v, v1, logits, act), want)
    torch.testing.assert_close(gate_mix(v, v1, logits, act), want)


@given(
    depth=st.integers(1, 5), batch=st.integers(1, 3), seq=st.integers(1, 4), dim=st.integers(1, 6),
    streams=st.integers(1, 4), per_batch=st.booleans(), per_token=st.booleans(), step=st.integers(1, 2),
)
def test_depth_aggregate_reference_and_dispatch_match_the_formula(
    depth, batch, seq, dim, streams, per_batch, per_token, step
):
    """Including slot views with a step (a dilated DenseFormer reads every other slot of the buffer)
    and static weights, which dispatch to one GEMM over the flattened slots."""
    buffer = torch.randn(depth * step + 1, batch, seq, dim, dtype=torch.float64)
    states = buffer[: depth * step : step]
    weights = torch.randn(batch if per_batch else 1, seq if per_token else 1, streams, depth, dtype=torch.float64)
    w = weights.expand(batch, seq, streams, depth)
    want = torch.stack([sum(w[:, :, s, j, None] * states[j] for j in range(depth)) for s in range(streams)])
    torch.testing.assert_close(depth_aggregate_reference(states, weights), want)
    torch.testing.assert_close(depth_aggregate(states, weights), want)
    if not (per_batch or per_token):
        torch.testing.assert_close(depth_aggregate_static(states, weights), want)


def test_gate_mix_rejects_bad_inputs_naming_the_argument():
    v, logits = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match=r"act must be one of \('relu', 'sigmoid'.*got 'gelu'"):
        gate_mix(v, v, logits, "gelu")
    with pytest.raises(ValueError, match="v1 must have the shape of v"):
        gate_mix(v, torch.randn(1, 4, 2, 4), logits, "relu")
    with pytest.raises(ValueError, match=r"logits must have shape \(batch, seq, kv_heads\) = \(1, 4, 2\)"):
        gate_mix(v, v, torch.randn(1, 4, 3), "relu")
    with pytest.raises(ValueError, match="v must have shape"):
        gate_mix(v[0], v[0], logits, "relu")


def test_depth_aggregate_rejects_bad_inputs_naming_the_argument():
    states = torch.randn(3, 2, 4, 8)
    with pytest.raises(ValueError, match="states must have shape"):
        depth_aggregate(states[0], torch.randn(1, 1, 1, 3))
    for bad in ((1, 1, 2, 4), (3, 1, 2, 3), (1, 2, 2, 3), (2, 3)):
        with pytest.raises(ValueError, match=r"weights must have shape \(batch or 1, seq or 1, streams, depth\)"):
            depth_aggregate(states, torch.randn(bad))
    with pytest.raises(ValueError, match="weights must be floating point"):
        depth_aggregate(states, torch.ones(1, 1, 2, 3, dtype=torch.long))


def test_dispatching_functions_compile_fullgraph():
    v, v1 = torch.randn(2, 3, 2, 4, requires_grad=True), torch.randn(2, 3, 2, 4, requires_grad=True)
    logits = torch.randn(2, 3, 2, requires_grad=True)
    weights = torch.randn(1, 1, 2, 3, requires_grad=True)

    def step(v, v1, logits, weights):
        mixed = gate_mix(v, v1, logits, "softmax")
        return depth_aggregate(torch.stack((v, v1, mixed)).flatten(3), weights).square().sum()

    inputs = (v, v1, logits, weights)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # dynamo: no graph break
    got = torch.autograd.grad(compiled(*inputs), inputs)
    want = torch.autograd.grad(step(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_next_power_of_2():
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_match_references_under_the_interpreter():
    """Runs tests/_kernels_interpret.py (kernels vs references, fp32/bf16, fwd/bwd, compile)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/_kernels_interpret.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
