"""CausalLM with every strategy: causality, decode == full forward, packing, compile, errors."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import TypeCheckError

from recipes.lm.builders import count_params, model_config, satformer
from recipes.lm.config import ModelConfig
from recipes.lm.generate import generate
from blocks import rope_tables
from recipes.lm.model import CausalLM, KVCache
from forms import FORM_IDS, FORMS
from value_routing import STRATEGIES
from value_routing.kernels import gate_mix_reference

STRATEGY_CASES = [
    ("baseline", {}),
    ("static", {"mode": "fixed"}),
    ("static", {"mode": "learnable"}),
    ("static", {"mode": "softmax"}),
    ("satformer", {"act": "relu"}),
    ("satformer", {"act": "softmax_sigmoid", "last_k": 1}),
]
ALL_REGISTERED = sorted(STRATEGIES)


def tiny(strategy="baseline", options=None, **overrides):
    kw = dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32)
    return ModelConfig(**{**kw, **overrides}, strategy=strategy, strategy_options=options or {})


def model_for(cfg, dtype=torch.float64):
    torch.manual_seed(0)
    model = CausalLM(cfg).to(dtype)
    with torch.no_grad():  # make reuse weights non-trivial so routing visibly matters
        for p in model.strategy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def tokens(batch, seq, vocab=61, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_causality_every_registered_strategy(strategy, options):
    model = model_for(tiny(strategy, options))
    x = tokens(2, 12)
    for t in (0, 5, 10):
        y = x.clone()
        y[:, t + 1 :] = tokens(2, 11 - t, seed=t + 1)
        torch.testing.assert_close(model(x).logits[:, : t + 1], model(y).logits[:, : t + 1])


@pytest.mark.parametrize("strategy, options", STRATEGY_CASES)
@given(split=st.integers(1, 11), kv_heads=st.sampled_from([1, 2, 4]))
def test_decode_equals_full_forward(strategy, options, split, kv_heads):
    cfg = tiny(strategy, options, n_kv_heads=kv_heads)
    model = model_for(cfg)
    x = tokens(2, 12)
    full = model(x).logits
    cache = KVCache.allocate(cfg, 2, 12, dtype=torch.float64)
    logits, cache = model(x[:, :split], cache=cache)
    steps = [logits]
    for t in range(split, 12):
        logits, cache = model(x[:, t : t + 1], cache=cache)
        steps.append(logits)
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_decode_equals_full_forward_every_registered_strategy(strategy, options):
    cfg = tiny(strategy, options)
    model = model_for(cfg)
    x = tokens(1, 9)
    cache = KVCache.allocate(cfg, 1, 9, dtype=torch.float64)
    out, cache = model(x[:, :4], cache=cache)
    outs = [out]
    for t in range(4, 9):
        out, cache = model(x[:, t : t + 1], cache=cache)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), model(x).logits)


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_packed_documents_equal_separate_forwards(strategy, options):
    model = model_for(tiny(strategy, options))
    docs = [tokens(1, n, seed=n) for n in (5, 3, 7)]
    packed = model(torch.cat(docs, dim=1), seq_lens=[5, 3, 7]).logits
    torch.testing.assert_close(packed, torch.cat([model(d).logits for d in docs], dim=1))


def test_generate_greedy_equals_argmax_rollout_without_cache():
    model = model_for(satformer("tiny", vocab_size=61, max_seq_len=32))
    out = generate(model, tokens(2, 4), max_new_tokens=6)
    seq = tokens(2, 4)
    for _ in range(6):
        seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq)


def test_generate_sampling_is_seeded():
    model = model_for(tiny("satformer"))
    a = generate(model, tokens(1, 3), 5, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    b = generate(model, tokens(1, 3), 5, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (1, 8)


@pytest.mark.parametrize("strategy", ["baseline", "static", "satformer"])
def test_compile_fullgraph_matches_eager(strategy):
    torch._dynamo.reset()
    model = model_for(tiny(strategy, n_layers=2), dtype=torch.float32).train()
    x = tokens(2, 8)
    eager = model(x).logits
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x).logits
    out.sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_reuse_strategies_change_the_function():
    x = tokens(1, 8)
    base = model_for(tiny("baseline"))(x).logits
    for strategy in ("static", "satformer"):
        assert not torch.allclose(model_for(tiny(strategy))(x).logits, base)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(d_model=30), "d_model"),
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(strategy="mystery"), "strategy must be one of"),
        (dict(strategy="satformer", strategy_options={"act": "gelu"}), "act must be one of"),
        (dict(strategy="satformer", strategy_options={"last_k": 3}), "last_k"),
        (dict(strategy="static", strategy_options={"lambda3": 1.0}), "strategy_options"),
        (dict(attention_backend="flash"), "attention_backend"),
        (dict(n_layers=0), "n_layers"),
    ],
)
def test_invalid_configs_name_the_field(overrides, match):
    kw = dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**kw, **overrides})


def test_forward_errors():
    cfg = tiny()
    model = model_for(cfg)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(1, 33))
    cache = KVCache.allocate(cfg, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="cache overflow"):
        model(tokens(1, 5), cache=cache)
    with pytest.raises(ValueError, match="batch == 1"):
        model(tokens(2, 4), seq_lens=[2, 2])


def test_shape_checker_catches_wrong_shapes():
    v = torch.randn(1, 4, 2, 8)
    with pytest.raises(TypeCheckError):
        gate_mix_reference(v, torch.randn(1, 4, 2, 4), torch.randn(1, 4, 2), "relu")
    with pytest.raises(TypeCheckError):
        gate_mix_reference(v, v, torch.randn(1, 4, 3), "relu")
    with pytest.raises(TypeCheckError):
        model_for(tiny()).hidden_states(torch.zeros(8, dtype=torch.long))  # forward raises a ValueError first


def test_builders_cover_every_size_and_small_is_128m():
    assert abs(count_params(model_config("small")) / 1e6 - 128) < 1.5
    for name in STRATEGIES:
        for size in ("tiny", "small", "medium", "large", "xl"):
            assert model_config(size, name).n_layers >= 4
    with pytest.raises(ValueError, match="size must be one of"):
        model_config("huge")


def test_compiled_model_handles_new_sequence_lengths():
    """A second length makes dynamo trace ``seq`` symbolically; results must still match."""
    torch._dynamo.reset()
    model = model_for(tiny("satformer", n_layers=2), dtype=torch.float32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for seq in (8, 6, 5):
        x = tokens(2, seq)
        torch.testing.assert_close(compiled(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("strategy", ["baseline", "static", "satformer", "lerp"])
def test_backward_keeps_no_qkv_output_alive(strategy):
    """v is a slice of each layer's fused QKV output; whatever backward saves of it (attention's v,
    static's dλ2, V1 in every later mix) must be a copy, or the whole QKV output stays alive."""
    cfg = ModelConfig(vocab_size=61, d_model=48, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16,
                      strategy=strategy)
    model, x = CausalLM(cfg), torch.randint(0, 61, (3, 7))
    qkv_bytes = 3 * 7 * (48 + 2 * 24) * 4  # no parameter has this size
    storages = set()

    def pack(t):
        if t.untyped_storage().nbytes() == qkv_bytes:
            storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).logits.sum()
    assert not storages


def test_init_is_gpt2_style():
    """N(0, init_std) everywhere, the residual-branch outputs (attention wo, FFN w2) scaled by
    1/sqrt(2L), norm scales 1 (the stds are estimated from 4096+ draws: within 10 %)."""
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=8, n_heads=4, init_std=0.05)
    torch.manual_seed(0)
    model = CausalLM(cfg)
    scaled = 0.05 / (2 * cfg.n_layers) ** 0.5
    for block in model.blocks:
        for weight, std in ((block.attn.wqkv.weight, 0.05), (block.ffn.w13.weight, 0.05),
                            (block.attn.wo.weight, scaled), (block.ffn.w2.weight, scaled)):
            assert abs(weight.std().item() / std - 1) < 0.1 and abs(weight.mean().item()) < 0.1 * std
        assert torch.equal(block.attn_norm.weight, torch.ones(64)) and torch.equal(block.ffn_norm.weight, torch.ones(64))
    assert abs(model.embed.weight.std().item() / 0.05 - 1) < 0.1


def test_low_precision_cast_keeps_exact_rope_tables():
    """`.to(bfloat16)` / `.half()` cast weights, not the RoPE angle tables (bf16 tables are off by up
    to 1/128 relative); a float64 cast keeps the float32 values it had."""
    cfg = satformer("tiny", max_seq_len=256)
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    for dtype in (torch.bfloat16, torch.float16):
        model = CausalLM(cfg).to(dtype)
        assert model.embed.weight.dtype == dtype
        assert model.rope_cos.dtype == model.rope_sin.dtype == torch.float32
        assert torch.equal(model.rope_cos, cos) and torch.equal(model.rope_sin, sin)
        assert torch.isfinite(model(torch.randint(0, 256, (1, 200))).logits.float()).all()
    model = CausalLM(cfg).double()
    assert model.rope_cos.dtype == torch.float64 and torch.equal(model.rope_cos, cos.double())
