"""SelectiveGate and StaticValueResidual against their equations."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import gate_values
from value_routing import GATE_ACTIVATIONS, NoReuse, SelectiveGate, StaticValueResidual


def tensors(batch, seq, kv_heads, head_dim, d_model, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(batch, seq, kv_heads, head_dim, generator=g, dtype=dtype)
    v1 = torch.randn(batch, seq, kv_heads, head_dim, generator=g, dtype=dtype, requires_grad=True)
    h = torch.randn(batch, seq, d_model, generator=g, dtype=dtype)
    return v, v1, h


@given(act=st.sampled_from(GATE_ACTIVATIONS), batch=st.integers(1, 2), seq=st.integers(1, 6),
       kv_heads=st.integers(1, 4), head_dim=st.sampled_from([2, 4]), layer=st.integers(1, 3))
def test_selective_gate_matches_equation(act, batch, seq, kv_heads, head_dim, layer):
    d_model = 8
    gate = SelectiveGate(d_model=d_model, n_layers=4, n_kv_heads=kv_heads, act=act).double()
    v, v1, h = tensors(batch, seq, kv_heads, head_dim, d_model)
    w = gate.gate_weight(layer)
    alpha = gate_values(torch.einsum("btd,hd->bth", h, w), act)
    torch.testing.assert_close(gate.mix_value(layer, v, h, v1)[0], v + alpha[..., None] * v1)
    torch.testing.assert_close(gate.gate(layer, h), alpha)


@given(act=st.sampled_from(GATE_ACTIVATIONS), bias=st.floats(-1, 1), layer=st.integers(1, 3))
def test_selective_gate_bias_matches_equation(act, bias, layer):
    """With ``bias_init`` the gate is act(W_α h + b), b a learned per-kv-head bias starting at bias_init."""
    gate = SelectiveGate(d_model=8, n_layers=4, n_kv_heads=2, act=act, bias_init=bias).double()
    b = gate.gates[layer - 1].bias
    assert b is not None and torch.equal(b, torch.full((2,), bias).double())  # initialised in float32
    with torch.no_grad():
        b.add_(torch.tensor([0.25, -0.5], dtype=torch.float64))  # trained biases differ per head
    v, v1, h = tensors(2, 3, 2, 4, 8)
    logits = torch.einsum("btd,hd->bth", h, gate.gate_weight(layer)) + b
    alpha = gate_values(logits, act)
    tol = dict(rtol=1e-6, atol=1e-6)  # softmax gates normalise in float32 by design
    torch.testing.assert_close(gate.mix_value(layer, v, h, v1)[0], v + alpha[..., None] * v1, **tol)
    torch.testing.assert_close(gate.gate(layer, h), alpha, **tol)
    # precomputed W_α h (a fused projection) gets the bias added
    torch.testing.assert_close(gate.mix_value(layer, v, h, v1, logits=logits - b)[0], v + alpha[..., None] * v1, **tol)


def test_relu_gate_bias_starts_half_open():
    gate = SelectiveGate(d_model=64, n_layers=2, n_kv_heads=2, bias_init=0.5)
    alpha = gate.gate(1, torch.randn(4, 16, 64) / 8)  # normed-scale inputs, W_α std 0.02
    assert (alpha - 0.5).abs().max() < 0.1
    assert SelectiveGate(d_model=64, n_layers=2, n_kv_heads=2).gates[0].bias is None


def test_selective_gate_layer0_is_identity_and_v1_gets_gradient():
    gate = SelectiveGate(d_model=8, n_layers=3, n_kv_heads=2, act="sigmoid").double()
    v, v1, h = tensors(2, 3, 2, 4, 8)
    out, state = gate.mix_value(0, v, h, None)
    assert out is v and torch.equal(state, v)  # layer 0 passes its values through and stores them as V1
    gate.mix_value(2, v, h, v1)[0].sum().backward()
    assert v1.grad is not None and v1.grad.abs().sum() > 0  # V1 is not detached
    assert gate.gates[1].weight.grad is not None and gate.gates[0].weight.grad is None


@pytest.mark.parametrize("last_k", [1, 2, 3])
def test_last_k_gates_only_the_last_layers(last_k):
    gate = SelectiveGate(d_model=8, n_layers=4, n_kv_heads=2, last_k=last_k).double()
    v, v1, h = tensors(1, 3, 2, 4, 8)
    assert len(gate.gates) == last_k
    for layer in range(4):
        mixed = gate.mix_value(layer, v, h, v1)[0]
        assert gate.is_gated(layer) == (layer >= 4 - last_k)
        assert (mixed is v) == (not gate.is_gated(layer))
    with pytest.raises(ValueError, match="not gated"):
        gate.gate(0, h)


def test_relu_gate_can_switch_reuse_off_exactly():
    gate = SelectiveGate(d_model=4, n_layers=2, n_kv_heads=2).double()
    with torch.no_grad():
        gate.gates[0].weight.fill_(-1.0)
    v, v1, _ = tensors(1, 2, 2, 4, 4)
    h = torch.ones(1, 2, 4, dtype=torch.float64)
    assert torch.equal(gate.mix_value(1, v, h, v1)[0], v)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(act="gelu"), "act must be one of"), (dict(last_k=4), "last_k"), (dict(last_k=0), "last_k"),
     (dict(n_kv_heads=0), "n_kv_heads"), (dict(n_layers=0), "n_layers"), (dict(bias_init="0.5"), "bias_init")],
)
def test_selective_gate_invalid_options(kwargs, match):
    base = dict(d_model=8, n_layers=4, n_kv_heads=2)
    with pytest.raises(ValueError, match=match):
        SelectiveGate(**{**base, **kwargs})


def test_gate_requires_v1_and_valid_layer():
    gate = SelectiveGate(d_model=8, n_layers=3, n_kv_heads=2)
    v, _, h = tensors(1, 2, 2, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="V1"):
        gate.mix_value(1, v, h, None)
    with pytest.raises(ValueError, match="layer must be in"):
        gate.mix_value(3, v, h, v)[0]


@given(lam1=st.floats(-2, 2), lam2=st.floats(-2, 2), layer=st.integers(1, 4))
def test_static_fixed_and_learnable_match_equation(lam1, lam2, layer):
    v, v1, h = tensors(2, 3, 2, 4, 8)
    for mode in ("fixed", "learnable"):
        s = StaticValueResidual(n_layers=5, mode=mode, lambda1=lam1, lambda2=lam2).double()
        torch.testing.assert_close(s.mix_value(layer, v, h, v1)[0], lam1 * v1 + lam2 * v)
    assert StaticValueResidual(n_layers=5).mix_value(0, v, h, None)[0] is v


def test_static_softmax_form():
    n_layers = 5
    s = StaticValueResidual(n_layers=n_layers, mode="softmax").double()
    with torch.no_grad():
        s.lambda_logits.copy_(torch.tensor([0.1, -0.3, 0.7, 0.0]))
    v, v1, h = tensors(1, 2, 2, 4, 8)
    weights = torch.exp(s.lambda_logits) / torch.exp(s.lambda_logits).sum()
    for layer in range(1, n_layers):
        expected = n_layers * weights[layer - 1] * v1 + 0.5 * v
        torch.testing.assert_close(s.mix_value(layer, v, h, v1)[0], expected)
    lam1, _ = s.lambdas()
    torch.testing.assert_close(lam1.sum(), torch.tensor(float(n_layers), dtype=torch.float64))  # s init L
    assert {n for n, _ in s.named_parameters()} == {"lambda_logits", "lambda_scale", "lambda2"}


def test_static_learnable_has_parameters_fixed_has_none():
    assert len(list(StaticValueResidual(n_layers=3, mode="fixed").parameters())) == 0
    assert sum(p.numel() for p in StaticValueResidual(n_layers=3).parameters()) == 4
    with pytest.raises(ValueError, match="mode must be one of"):
        StaticValueResidual(n_layers=3, mode="dynamic")


def test_no_reuse_is_identity():
    v, v1, h = tensors(1, 2, 2, 4, 8)
    assert NoReuse(n_layers=2).mix_value(1, v, h, v1)[0] is v
