"""LerpValueResidual against its equation, a plain loop, and x-transformers' own Attention."""

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from blocks import AttentionContext, CausalSelfAttention
from value_routing import LerpValueResidual
from value_routing.attention import AttentionMask, get_backend

x_transformers = pytest.importorskip("x_transformers")


def tensors(batch, seq, kv_heads, head_dim, d_model, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, seq, kv_heads, head_dim, generator=g, dtype=torch.float64)
    v1 = torch.randn(batch, seq, kv_heads, head_dim, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(batch, seq, d_model, generator=g, dtype=torch.float64)
    return v, v1, h


def loop_mix(v, v1, h, weight, bias):
    """``μ V + (1 − μ) V1`` one token and kv-head at a time."""
    out = torch.empty_like(v)
    for b in range(v.shape[0]):
        for t in range(v.shape[1]):
            for head in range(v.shape[2]):
                mu = 1 / (1 + math.exp(-float(h[b, t] @ weight[head] + bias[head])))
                out[b, t, head] = mu * v[b, t, head] + (1 - mu) * v1[b, t, head]
    return out


@given(batch=st.integers(1, 2), seq=st.integers(1, 5), kv_heads=st.integers(1, 4), head_dim=st.sampled_from([2, 4]),
       n_layers=st.integers(2, 5), data=st.data())
def test_mix_matches_a_loop(batch, seq, kv_heads, head_dim, n_layers, data):
    layer = data.draw(st.integers(1, n_layers - 1))
    mix = LerpValueResidual(d_model=6, n_layers=n_layers, n_kv_heads=kv_heads).double()
    v, v1, h = tensors(batch, seq, kv_heads, head_dim, 6, seed=layer)
    out, state = mix.mix_value(layer, v, h, v1)
    gate = mix.gates[layer - 1]
    torch.testing.assert_close(out, loop_mix(v, v1, h, gate.weight.detach(), gate.bias.detach()))
    assert state is v1
    mu = torch.sigmoid(h @ gate.weight.T + gate.bias)
    torch.testing.assert_close(mix.mix(layer, h), mu)
    # the weight multiplies the layer's own values: μ → 1 keeps them, μ → 0 gives V1
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.fill_(60.0)
    torch.testing.assert_close(mix.mix_value(layer, v, h, v1)[0], v)
    with torch.no_grad():
        gate.bias.fill_(-60.0)
    torch.testing.assert_close(mix.mix_value(layer, v, h, v1)[0], v1.detach())


def test_layer0_is_the_source_and_v1_gets_gradient():
    mix = LerpValueResidual(d_model=8, n_layers=3, n_kv_heads=2).double()
    v, v1, h = tensors(2, 3, 2, 4, 8)
    out, state = mix.mix_value(0, v, h, None)
    assert out is v and torch.equal(state, v)
    with pytest.raises(ValueError, match="needs V1"):
        mix.mix_value(1, v, h, None)
    with pytest.raises(ValueError, match="layer 0 is the source"):
        mix.mix(0, h)
    with pytest.raises(ValueError, match="layer must be in"):
        mix.mix_value(3, v, h, v1)
    out, _ = mix.mix_value(2, v, h, v1)
    out.sum().backward()
    expected = 1 - mix.mix(2, h).detach()  # dV'/dV1 = 1 − μ
    torch.testing.assert_close(v1.grad, expected[..., None].expand_as(v1))
    assert all(p.grad is not None for p in mix.gates[1].parameters())
    assert len(mix.gates) == 2  # layers 1 and 2 only


def test_init_follows_nn_linear_and_the_options():
    d = 64
    mix = LerpValueResidual(d_model=d, n_layers=3, n_kv_heads=4)
    bound = 1 / math.sqrt(d)
    for gate in mix.gates:  # nn.Linear's default, as x-transformers: U(-1/√d, 1/√d) for W and b
        assert gate.weight.abs().max() <= bound and gate.bias.abs().max() <= bound
        assert gate.weight.std() > 0.8 * bound / math.sqrt(3)
    h = torch.randn(8, 16, d) / 8  # normed-scale input
    assert (mix.mix(1, h).mean() - 0.5).abs() < 0.1  # starts near ResFormer's half-and-half
    opened = LerpValueResidual(d_model=d, n_layers=3, n_kv_heads=4, init_std=0.0, bias_init=4.0)
    assert torch.equal(opened.gates[0].weight, torch.zeros(4, d))
    assert torch.equal(opened.gates[1].bias, torch.full((4,), 4.0))
    torch.testing.assert_close(opened.mix(2, h), torch.full((8, 16, 4), 1 / (1 + math.exp(-4.0))))
    normal = LerpValueResidual(d_model=d, n_layers=2, n_kv_heads=64, init_std=0.5)
    assert abs(normal.gates[0].weight.std().item() / 0.5 - 1) < 0.1


@given(name=st.sampled_from(["init_std", "bias_init"]),
       value=st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), "0.1", True, [0.1]]),
                       st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False), st.floats(min_value=3.5e38)))
def test_bad_options_name_the_option(name, value):
    if name == "bias_init" and isinstance(value, float) and abs(value) < 3.4e38:
        LerpValueResidual(d_model=4, n_layers=2, n_kv_heads=1, bias_init=value)  # negative biases are fine
        return
    with pytest.raises(ValueError, match=name):
        LerpValueResidual(d_model=4, n_layers=2, n_kv_heads=1, **{name: value})


@pytest.mark.parametrize("name, value", [("d_model", 0), ("n_kv_heads", 0), ("n_layers", 0)])
def test_bad_dimensions_name_the_dimension(name, value):
    kw = {"d_model": 4, "n_layers": 2, "n_kv_heads": 1, name: value}
    with pytest.raises(ValueError, match=name):
        LerpValueResidual(**kw)


# ----------------------------------------------------------------------------- x-transformers


def our_layer(xt_attn, heads, kv_heads, dim):
    """A CausalSelfAttention with the weights of an x-transformers ``Attention``."""
    ours = CausalSelfAttention(dim, heads, kv_heads, qk_norm=False, norm_eps=1e-6).double()
    with torch.no_grad():
        ours.wqkv.weight.copy_(torch.cat((xt_attn.to_q.weight, xt_attn.to_k.weight, xt_attn.to_v.weight)))
        ours.wo.weight.copy_(xt_attn.to_out.weight)
    return ours


def context(seq, head_dim):
    # x-transformers' Attention gets no rotary embedding here: our RoPE at angle 0 is the identity
    ones = torch.ones(seq, head_dim // 2, dtype=torch.float64)
    return AttentionContext((ones, torch.zeros_like(ones)), AttentionMask(), get_backend("sdpa", "cpu"))


def test_matches_x_transformers_attention():
    """Two x-transformers layers (the second with ``learned_value_residual_mix``, fed the first's
    ``values`` intermediate) against our attention + strategy with the same weights, float64."""
    from x_transformers import Attention

    dim, heads, head_dim, batch, seq = 24, 4, 6, 2, 7
    torch.manual_seed(3)
    first = Attention(dim, heads=heads, dim_head=head_dim, causal=True).double()
    second = Attention(dim, heads=heads, dim_head=head_dim, causal=True, learned_value_residual_mix=True).double()
    for layer in (first, second):  # its softmax runs in float32 (unless qk-norm): keep float64
        layer.attend.attn_fn = functools.partial(torch.softmax, dim=-1)
    with torch.no_grad():  # away from σ ≈ 0.5 everywhere, so the mix's orientation matters
        second.to_value_residual_mix[0].bias.copy_(torch.tensor([2.0, -2.0, 0.5, -1.0]))
    mix = LerpValueResidual(d_model=dim, n_layers=2, n_kv_heads=heads).double()
    with torch.no_grad():
        mix.gates[0].load_state_dict(second.to_value_residual_mix[0].state_dict())
    ours0, ours1 = our_layer(first, heads, heads, dim), our_layer(second, heads, heads, dim)
    h0, h1 = torch.randn(batch, seq, dim, dtype=torch.float64), torch.randn(batch, seq, dim, dtype=torch.float64)
    ctx = context(seq, head_dim)

    out0, inter = first(h0, return_intermediates=True)
    v1_theirs = inter.values  # (batch, heads, seq, head_dim): layer 0's raw values
    expected = second(h1, value_residual=v1_theirs)

    q, k, v, _ = ours0.project(h0, h0, h0)
    v, state = mix.mix_value(0, v, h0, None)
    torch.testing.assert_close(state, v1_theirs.transpose(1, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours0.attend(q, k, v, ctx), out0, rtol=1e-10, atol=1e-12)
    q, k, v, _ = ours1.project(h1, h1, h1)
    v, state = mix.mix_value(1, v, h1, state)
    torch.testing.assert_close(ours1.attend(q, k, v, ctx), expected, rtol=1e-10, atol=1e-12)
    # the mixed values are what its KV cache holds, too
    _, inter1 = second(h1, value_residual=v1_theirs, return_intermediates=True)
    torch.testing.assert_close(v, inter1.cached_kv[1].transpose(1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kv_heads, error", [(2, RuntimeError), (1, Exception)])
def test_x_transformers_per_query_head_gate_fails_under_gqa(kv_heads, error):
    """x-transformers' gate has one output per query head: with 2 of 4 kv-heads lerp cannot
    broadcast; with 1 it broadcasts the values to 4 heads and its attention then rejects them.
    Ours gates per kv-head and runs (the docs record both)."""
    from x_transformers import Attention

    attn = Attention(16, heads=4, dim_head=4, kv_heads=kv_heads, causal=True, learned_value_residual_mix=True)
    x = torch.randn(2, 5, 16)
    _, inter = attn(x, return_intermediates=True)
    with pytest.raises(error):
        attn(x, value_residual=inter.values)
    mix = LerpValueResidual(d_model=16, n_layers=2, n_kv_heads=kv_heads)
    v = torch.randn(2, 5, kv_heads, 4)
    assert mix.mix_value(1, v, x, inter.values.transpose(1, 2))[0].shape == v.shape
