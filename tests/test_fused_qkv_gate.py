"""W_α folded into the QKV GEMM (SelectiveGate ``fuse_projection``) == the separate gate projection."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from blocks import CausalSelfAttention
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM, KVCache
from value_routing import SelectiveGate
from value_routing.strategies import NoReuse, StaticValueResidual


def tiny(fuse, strategy="satformer", options=None, **overrides):
    kw = dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16)
    options = {**(options or {}), **({"fuse_projection": fuse} if strategy == "satformer" else {})}
    return ModelConfig(**{**kw, **overrides}, strategy=strategy, strategy_options=options)


def twin_models(strategy="satformer", options=None, **overrides):
    """The unfused and fused model with identical float64 weights (fusing adds no parameter)."""
    torch.manual_seed(0)
    plain = CausalLM(tiny(False, strategy, options, **overrides)).double()
    with torch.no_grad():
        for p in plain.strategy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fused = CausalLM(tiny(True, strategy, options, **overrides)).double()
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def tokens(batch, seq, seed=0):
    return torch.randint(0, 61, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "options", [{"act": "relu"}, {"act": "softmax_sigmoid"}, {"act": "tanh", "last_k": 1},
                {"act": "relu", "bias_init": 0.5}]
)
@given(kv_heads=st.sampled_from([1, 2, 4]), seq=st.integers(1, 8))
def test_fused_equals_unfused_forward_and_gradients(options, kv_heads, seq):
    plain, fused = twin_models(options=options, n_kv_heads=kv_heads)
    x = tokens(2, seq)
    out_plain, out_fused = plain(x).logits, fused(x).logits
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-12, atol=1e-12)
    out_plain.square().sum().backward()
    out_fused.square().sum().backward()
    named = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, named[name].grad, rtol=1e-10, atol=1e-12, msg=name)
    for gate in fused.strategy.gates:  # gradients reach W_α through the concatenated weight
        assert gate.weight.grad.abs().sum() > 0


def test_fused_model_never_runs_the_separate_gate_projection():
    plain, fused = twin_models()
    calls = []
    for model in (plain, fused):
        for gate in model.strategy.gates:
            gate.register_forward_hook(lambda mod, inp, out, model=model: calls.append(model))
        model(tokens(1, 4))
    assert calls.count(plain) == len(plain.strategy.gates) and fused not in calls


def test_fused_decode_equals_fused_full_forward():
    _, fused = twin_models(options={"act": "sigmoid"})
    x = tokens(2, 10)
    full = fused(x).logits
    cache = KVCache.allocate(fused.cfg, 2, 10, dtype=torch.float64)
    first, cache = fused(x[:, :6], cache=cache)
    steps = [first]
    for t in range(6, 10):
        out, cache = fused(x[:, t : t + 1], cache=cache)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_strategies_without_a_projection_offer_none():
    assert NoReuse(3).value_projection(1) is None
    assert StaticValueResidual(3).value_projection(1) is None


def test_selective_gate_value_projection_is_w_alpha_of_gated_layers_only_when_fused():
    gate = SelectiveGate(d_model=16, n_layers=4, n_kv_heads=2, last_k=2, fuse_projection=True)
    assert gate.value_projection(0) is None and gate.value_projection(1) is None
    assert gate.value_projection(3) is gate.gates[1].weight
    with pytest.raises(ValueError, match="layer must be in"):
        gate.value_projection(4)
    unfused = SelectiveGate(d_model=16, n_layers=4, n_kv_heads=2, last_k=2)
    assert all(unfused.value_projection(layer) is None for layer in range(4))


def test_attention_fuses_into_the_value_gemm_when_inputs_differ():
    """MUDD-style distinct q/k/v inputs: W_α joins the value GEMM, whose input is the gate's h."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, 2, qk_norm=False, norm_eps=1e-6).double()
    gate = SelectiveGate(d_model=32, n_layers=2, n_kv_heads=2, act="sigmoid").double()
    hq, hk, hv = (torch.randn(2, 5, 32, dtype=torch.float64) for _ in range(3))
    v1 = torch.randn(2, 5, 2, 8, dtype=torch.float64)
    for inputs in ((hq, hk, hv), (hq, hq, hq), (hq, hq, hv)):
        q, k, v, logits = attn.project(*inputs)
        fq, fk, fv, flogits = attn.project(*inputs, gate.gates[0].weight)
        assert logits is None
        for got, want in ((fq, q), (fk, k), (fv, v), (flogits, inputs[2] @ gate.gates[0].weight.T)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        mixed, _ = gate.mix_value(1, fv, inputs[2], v1, logits=flogits)
        torch.testing.assert_close(mixed, gate.mix_value(1, v, inputs[2], v1)[0], rtol=1e-12, atol=1e-12)


def test_fused_model_compiles_fullgraph():
    torch._dynamo.reset()  # earlier compiles may have marked seq dynamic (SDPA then rejects is_causal)
    _, fused = twin_models(options={"act": "softmax"})
    x = tokens(2, 6)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x).logits, fused(x).logits)


def test_config_rejects_non_bool_fuse_flag():
    with pytest.raises(ValueError, match="fuse_projection must be True or False"):
        tiny("yes")
