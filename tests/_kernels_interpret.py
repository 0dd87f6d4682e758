"""Triton kernels vs their PyTorch references, run on CPU by Triton's interpreter.

Not collected directly (the name does not start with ``test_``): ``tests/test_kernels.py``
runs this file in a subprocess with ``TRITON_INTERPRET=1``, which must be set before Triton
is first imported and so cannot be switched on inside a shared pytest process.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)
pytest.importorskip("triton")

import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from value_routing.kernels import GATE_ACTIVATIONS  # noqa: E402
from value_routing.kernels.depth_aggregate import (  # noqa: E402
    depth_aggregate_reference,
    depth_aggregate_triton,
)
from value_routing.kernels.gate_mix import gate_mix_reference, gate_mix_triton  # noqa: E402

#: (rtol, atol) per dtype; bfloat16 outputs are compared with a float32 reference.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2)}
DTYPES = st.sampled_from(tuple(TOLERANCES))


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def _check(op, reference, inputs, dtype):
    """Op forward and backward on ``inputs`` == float32 reference on the same (rounded) values."""
    inputs = [_leaf(t) for t in inputs]
    out = op(*inputs)
    assert out.dtype == inputs[0].dtype
    grad = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [_leaf(t.float()) for t in inputs]
    ref_out = reference(*ref_inputs)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad.float())
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out.float(), ref_out, rtol=rtol, atol=atol)
    for g, r, x in zip(grads, ref_grads, inputs):
        assert g.shape == x.shape and g.dtype == x.dtype
        torch.testing.assert_close(g.float(), r, rtol=rtol, atol=atol)


@given(
    act=st.sampled_from(GATE_ACTIVATIONS),
    dtype=DTYPES,
    batch=st.integers(1, 2),
    seq=st.integers(1, 5),
    heads=st.integers(1, 5),
    head_dim=st.sampled_from((1, 3, 8)),
)
def test_gate_mix_kernel_matches_reference(act, dtype, batch, seq, heads, head_dim):
    v, v1 = (torch.randn(batch, seq, heads, head_dim).to(dtype) for _ in range(2))
    logits = torch.randn(batch, seq, heads).to(dtype)
    _check(lambda *a: gate_mix_triton(*a, act), lambda *a: gate_mix_reference(*a, act), (v, v1, logits), dtype)


@pytest.mark.parametrize("dtype", tuple(TOLERANCES))
@pytest.mark.parametrize("act", GATE_ACTIVATIONS)
def test_gate_mix_kernel_every_activation(act, dtype):
    """Every activation and dtype, with a head count that is not a power of two (masked heads)."""
    v, v1 = (3 * torch.randn(2, 3, 3, 5).to(dtype) for _ in range(2))
    logits = 2 * torch.randn(2, 3, 3).to(dtype)
    _check(lambda *a: gate_mix_triton(*a, act), lambda *a: gate_mix_reference(*a, act), (v, v1, logits), dtype)


@pytest.mark.parametrize("act", GATE_ACTIVATIONS)
def test_gate_mix_kernel_reads_strided_views_of_a_fused_projection(act):
    """v, v1 and logits as column slices of one (batch, seq, features) projection output."""
    batch, seq, heads, dim = 2, 3, 3, 4
    proj = torch.randn(batch, seq, 2 * heads * dim + heads + 5, requires_grad=True)
    v = proj[..., : heads * dim].view(batch, seq, heads, dim)
    v1 = proj[..., heads * dim : 2 * heads * dim].view(batch, seq, heads, dim)
    logits = proj[..., 2 * heads * dim : 2 * heads * dim + heads]
    assert not v.is_contiguous() and not logits.is_contiguous()
    grad = torch.randn(batch, seq, heads, dim).transpose(0, 1).contiguous().transpose(0, 1)  # strided too
    (d_kernel,) = torch.autograd.grad(gate_mix_triton(v, v1, logits, act), proj, grad)
    (d_ref,) = torch.autograd.grad(gate_mix_reference(v, v1, logits, act), proj, grad)
    torch.testing.assert_close(gate_mix_triton(v, v1, logits, act), gate_mix_reference(v, v1, logits, act))
    torch.testing.assert_close(d_kernel, d_ref)


@pytest.mark.parametrize("shape", [(3, 1, 2, 600), (1, 5, 3, 700)])
def test_gate_mix_kernel_tiles_many_programs(shape):
    """Wide heads leave room for few tokens per program: a multi-program grid, last tile partial."""
    v, v1 = torch.randn(shape), torch.randn(shape)
    logits = torch.randn(shape[:3])
    _check(
        lambda *a: gate_mix_triton(*a, "softmax"), lambda *a: gate_mix_reference(*a, "softmax"),
        (v, v1, logits), torch.float32,
    )


def test_depth_aggregate_kernel_loops_over_channel_blocks():
    """dim > 1024: several channel blocks in the forward grid and the backward loop."""
    buffer = torch.randn(3, 2, 1, 1100)
    _check(depth_aggregate_triton, depth_aggregate_reference, (buffer[:2], torch.randn(2, 1, 3, 2)), torch.float32)


def test_gate_mix_kernel_relu_gradient_is_zero_at_zero_logits():
    v = torch.randn(1, 2, 2, 4)
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    gate_mix_triton(v, v, logits, "relu").sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@given(
    dtype=DTYPES,
    depth=st.integers(1, 4),
    spare=st.integers(0, 2),
    batch=st.integers(1, 2),
    seq=st.integers(1, 3),
    dim=st.sampled_from((1, 5, 8)),
    streams=st.integers(1, 4),
    per_batch=st.booleans(),
    per_token=st.booleans(),
)
def test_depth_aggregate_kernel_matches_reference(dtype, depth, spare, batch, seq, dim, streams, per_batch, per_token):
    """States are the first ``depth`` slots of a larger preallocated buffer; weights broadcast."""
    buffer = torch.randn(depth + spare, batch, seq, dim).to(dtype)
    weights = torch.randn(batch if per_batch else 1, seq if per_token else 1, streams, depth)
    _check(depth_aggregate_triton, depth_aggregate_reference, (buffer[:depth], weights), dtype)


def test_depth_aggregate_kernel_takes_expanded_weights_and_matching_dtypes():
    states = torch.randn(3, 2, 2, 4, dtype=torch.bfloat16)
    weights = torch.randn(1, 1, 2, 3, dtype=torch.bfloat16).expand(2, 2, 2, 3)
    torch.testing.assert_close(
        depth_aggregate_triton(states, weights).float(),
        depth_aggregate_reference(states.float(), weights.float()),
        rtol=1e-2, atol=1e-2,
    )


def test_ops_compile_fullgraph_forward_and_backward():
    """One opaque op per kernel, so the compiled graph has no break and gradients flow."""
    v, v1 = torch.randn(2, 2, 3, 4, requires_grad=True), torch.randn(2, 2, 3, 4, requires_grad=True)
    logits = torch.randn(2, 2, 3, requires_grad=True)
    weights = torch.randn(1, 1, 2, 3, requires_grad=True)

    def step(v, v1, logits, weights):
        mixed = gate_mix_triton(v, v1, logits, "softmax_sigmoid")
        states = torch.stack((v, v1, mixed)).flatten(3)  # (3, batch, seq, heads * dim)
        return depth_aggregate_triton(states, weights).square().sum()

    inputs = (v, v1, logits, weights)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*inputs), inputs)
    want = torch.autograd.grad(step(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_kernel_entry_points_validate_inputs():
    v = torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match="act must be one of"):
        gate_mix_triton(v, v, torch.randn(1, 2, 2), "gelu")
    with pytest.raises(ValueError, match="weights must have shape"):
        depth_aggregate_triton(torch.randn(3, 1, 2, 4), torch.randn(1, 1, 2, 4))
