"""EmbeddingShortcut against its equation (a plain per-token loop), its init and its options."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from value_routing import EmbeddingShortcut


def loop_inputs(strategy, x0, outputs, gate, x0_norm, eps):
    """Every block's input by the equation, one token at a time: block ``ℓ`` reads
    ``λr_ℓ x_ℓ + λ0_ℓ(t) x0`` with ``x_0 = x0`` and ``x_ℓ = outputs[ℓ - 1]``."""
    lam_r, lam_0 = strategy.resid_lambdas.detach(), strategy.x0_lambdas.detach()
    inputs = []
    for layer in range(len(outputs) + 1):
        out = torch.empty_like(x0)
        for b in range(x0.shape[0]):
            for t in range(x0.shape[1]):
                e = x0[b, t]
                if x0_norm:
                    e = e / math.sqrt(float((e * e).mean()) + eps)
                x = e if layer == 0 else outputs[layer - 1][b, t]
                w0 = lam_0[layer]
                if gate:
                    w0 = w0 + float(strategy.gate_weight[layer].detach() @ (x / math.sqrt(float((x * x).mean()) + eps)))
                out[b, t] = lam_r[layer] * x + w0 * e
        inputs.append(out)
    return inputs


@given(n_layers=st.integers(1, 4), gate=st.booleans(), x0_norm=st.booleans(), batch=st.integers(1, 2),
       seq=st.integers(1, 4), eps=st.sampled_from([1e-6, 1e-2]))
def test_block_inputs_match_a_loop(n_layers, gate, x0_norm, batch, seq, eps):
    s = EmbeddingShortcut(d_model=6, n_layers=n_layers, gate=gate, x0_norm=x0_norm, norm_eps=eps).double()
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(n_layers)
    x0 = 3 * torch.randn(batch, seq, 6, generator=g, dtype=torch.float64)
    outputs = [torch.randn(batch, seq, 6, generator=g, dtype=torch.float64) for _ in range(n_layers)]
    expected = loop_inputs(s, x0, outputs[:-1], gate, x0_norm, eps)
    inp, state = s.init_state(x0)
    got = [inp.x]
    for layer, y in enumerate(outputs):
        inp, state = s.block_output(layer, y, state)
        got.append(inp.x)
        assert inp.q is inp.k is inp.v is None
    for layer in range(n_layers):
        torch.testing.assert_close(got[layer], expected[layer], msg=f"block {layer}'s input")
    assert got[-1] is outputs[-1]  # the final norm reads the last block's output unmixed


def test_layer0_input_and_state():
    s = EmbeddingShortcut(d_model=4, n_layers=2, resid_init=0.75, x0_init=0.5).double()
    x0 = torch.randn(2, 3, 4, dtype=torch.float64)
    inp, state = s.init_state(x0)
    assert state is x0
    torch.testing.assert_close(inp.x, 1.25 * x0)  # block 0 reads (λr + λ0)·x0
    normed = EmbeddingShortcut(d_model=4, n_layers=2, x0_norm=True).double()
    inp, state = normed.init_state(x0)
    torch.testing.assert_close(state.pow(2).mean(-1), torch.ones(2, 3, dtype=torch.float64), rtol=1e-5, atol=0)
    assert torch.equal(inp.x, state)  # λ = [1, 0]: the stream starts from n(embed), as modded-nanogpt
    with pytest.raises(ValueError, match="needs x0"):
        s.block_output(0, x0, None)
    with pytest.raises(ValueError, match="layer must be in"):
        s.block_output(2, x0, x0)


def test_init_is_the_baseline_and_the_gate_starts_static():
    """λ = [1, 0] and a zero gate: the same logits as the baseline with the same weights, exactly;
    and the gate's first gradient is nonzero (it can learn)."""
    kw = dict(vocab_size=37, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1, max_seq_len=16)
    torch.manual_seed(0)
    base = CausalLM(ModelConfig(**kw)).double()
    x = torch.randint(0, 37, (2, 7))
    for options in ({}, {"gate": True}):
        model = CausalLM(ModelConfig(**kw, strategy="shortcut", strategy_options=options)).double()
        missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
        assert all(k.startswith("strategy.") for k in missing) and missing
        logits = model(x).logits
        assert torch.equal(logits, base(x).logits)
        logits.square().mean().backward()
        grads = {n: p.grad for n, p in model.strategy.named_parameters()}
        assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads.keys()
    s = EmbeddingShortcut(d_model=16, n_layers=3, gate=True)
    assert torch.equal(s.gate_weight, torch.zeros(3, 16))
    assert torch.equal(s.resid_lambdas, torch.ones(3)) and torch.equal(s.x0_lambdas, torch.zeros(3))
    assert all(p.ndim == 1 for n, p in s.named_parameters() if "lambdas" in n)  # not weight-decayed


def test_gate_is_per_token():
    s = EmbeddingShortcut(d_model=8, n_layers=2, gate=True).double()
    with torch.no_grad():
        s.gate_weight.normal_()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    w = s.x0_weight(1, x)
    assert w.shape == (1, 5, 1) and w.std() > 0
    torch.testing.assert_close(s.x0_weight(1, x[:, 2:3]), w[:, 2:3])  # depends on its own token only
    assert EmbeddingShortcut(d_model=8, n_layers=2).x0_weight(1, x).shape == (1, 1, 1)


BAD = {
    "gate": st.sampled_from([0, 1, "yes", None]),
    "x0_norm": st.sampled_from([0, 1, "no", None]),
    "resid_init": st.sampled_from([float("nan"), float("inf"), "1", None, True]),
    "x0_init": st.sampled_from([float("nan"), -float("inf"), "0", None, False]),
    "norm_eps": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.sampled_from([float("nan"), float("inf"), "1e-6"])),
}


@given(data=st.data(), name=st.sampled_from(sorted(BAD)))
def test_bad_options_name_the_option(data, name):
    value = data.draw(BAD[name])
    with pytest.raises(ValueError, match=name):
        EmbeddingShortcut(d_model=4, n_layers=2, **{name: value})


@pytest.mark.parametrize("name", ["d_model", "n_layers"])
def test_bad_dimensions_name_the_dimension(name):
    with pytest.raises(ValueError, match=name):
        EmbeddingShortcut(**{"d_model": 4, "n_layers": 2, name: 0})
