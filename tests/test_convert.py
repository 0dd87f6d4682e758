"""Llama-family Hugging Face models to and from CausalLM (recipes/interop/convert.py).

Tiny random Llama / Mistral / Qwen2 / Qwen3 models in float64, every weight perturbed away from
its init. Hugging Face computes its RMSNorms and RoPE angles in float32 even in a float64 model,
so the tight comparisons (``exact``) patch those two to float64 on its side and give ours exact
float64 RoPE tables (ours are float64 angles rounded to float32): what remains is the mapping of
the weights and the architecture, at rtol 1e-10. The unpatched models agree to float32 rounding.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,  # noqa: E402
                          LlamaForSequenceClassification, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from forms import FORM_IDS, FORMS  # noqa: E402
from recipes.interop.convert import from_hf, ours_to_hf, to_hf  # noqa: E402
from recipes.lm.model import CausalLM, KVCache  # noqa: E402
from test_model import tiny  # noqa: E402
from value_routing.strategies import build_strategy  # noqa: E402

MODELS = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
          "qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
CASES = [
    ("llama", {"tie_word_embeddings": True}),
    ("llama", {"tie_word_embeddings": False, "num_key_value_heads": 1, "head_dim": 12}),
    ("mistral", {"sliding_window": None}),
    ("mistral", {"sliding_window": 16, "tie_word_embeddings": True}),  # window = max_seq_len: exact
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True, "head_dim": 4}),
    ("qwen3", {"head_dim": 12}),  # 4 heads × 12 ≠ hidden 32, as in Qwen3-0.6B
    ("qwen3", {"head_dim": 8, "tie_word_embeddings": True, "num_key_value_heads": 4}),
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for name, kw in CASES]
TIGHT = dict(rtol=1e-10, atol=1e-12)


def hf_model(name, seed=0, **overrides):
    """A tiny float64 HF model of family ``name``, every tensor perturbed (norm weights, biases too)."""
    config_class, model_class = MODELS[name]
    kw = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=16, rms_norm_eps=1e-5, tie_word_embeddings=False,
              rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    torch.manual_seed(seed)
    model = model_class(config_class(**{**kw, **overrides})).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def tokens(batch, seq, seed=0):
    return torch.randint(0, 61, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _exact_norm(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _exact_rope(self, x, position_ids):
    d = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
    inv_freq = self.config.rope_parameters["rope_theta"] ** -(torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = position_ids[..., None].double() * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@pytest.fixture
def exact(monkeypatch):
    """Patch ``hf``'s norms and RoPE to float64 and give ``ours`` exact float64 RoPE tables."""

    def patch(hf, ours):
        monkeypatch.setattr(type(hf.model.norm), "forward", _exact_norm)
        monkeypatch.setattr(type(hf.model.rotary_emb), "forward", _exact_rope)
        d, n = ours.cfg.head_dim, ours.cfg.max_seq_len
        inv_freq = ours.cfg.rope_theta ** -(torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq
        ours.rope_cos, ours.rope_sin = angles.cos(), angles.sin()

    return patch


def grads_by_hf_name(model, logits, weight):
    model.zero_grad()
    (logits * weight).sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name, overrides", CASES, ids=IDS)
def test_logits_and_gradients_equal_hf_at_float64(name, overrides, exact):
    hf = hf_model(name, **overrides)
    ours = from_hf(hf)
    exact(hf, ours)
    x = tokens(2, 16)
    expected, logits = hf(x).logits, ours(x).logits
    torch.testing.assert_close(logits, expected, **TIGHT)
    weight = torch.randn(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theirs = grads_by_hf_name(hf, expected, weight)
    mine = grads_by_hf_name(ours, logits, weight)
    mapped = ours_to_hf(mine, ours.cfg)
    if ours.cfg.tie_embeddings:  # HF lists the tied head once, under the embedding
        theirs.pop("lm_head.weight", None)
    assert mapped.keys() == theirs.keys()
    for n, g in theirs.items():
        torch.testing.assert_close(mapped[n], g, **TIGHT, msg=n)


@pytest.mark.parametrize("name, overrides", CASES, ids=IDS)
def test_unpatched_models_agree_to_float32_rounding(name, overrides):
    hf = hf_model(name, **overrides)
    ours = from_hf(hf)
    x = tokens(2, 16)
    torch.testing.assert_close(ours(x).logits, hf(x).logits, rtol=1e-5, atol=1e-5)
    hf32, ours32 = hf.float(), from_hf(hf.float())
    assert ours32.embed.weight.dtype == torch.float32 and ours32.rope_cos.dtype == torch.float32
    torch.testing.assert_close(ours32(x).logits, hf32(x).logits, rtol=1e-4, atol=1e-4)


def test_rope_tables_agree():
    hf = hf_model("qwen3", head_dim=12)
    ours = from_hf(hf)
    x = torch.zeros(1, 16, dtype=torch.float64)
    cos, sin = hf.model.rotary_emb(x, torch.arange(16)[None])
    torch.testing.assert_close(torch.cat((ours.rope_cos, ours.rope_cos), -1), cos[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat((ours.rope_sin, ours.rope_sin), -1), sin[0], rtol=0, atol=1e-6)


def test_our_rope_tables_are_the_more_accurate_at_long_positions():
    """docs/guides/convert.md: float64 angles rounded once to float32 beat float32 angles."""
    hf = hf_model("llama", max_position_embeddings=4096).float()
    ours = from_hf(hf)
    positions = torch.arange(4096)
    cos, _ = hf.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions[None])
    inv_freq = 500.0 ** -(torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    exact = (positions[:, None].double() * inv_freq).cos()
    ours_err = (ours.rope_cos.double() - exact).abs()[2048:].max()
    hf_err = (cos[0, :, :4].double() - exact).abs()[2048:].max()
    assert ours_err < 1e-7 < 1e-5 < hf_err


@pytest.mark.parametrize("name, overrides", CASES, ids=IDS)
def test_round_trip_gives_the_same_model(name, overrides):
    hf = hf_model(name, **overrides)
    ours = from_hf(hf)
    assert (ours.lm_head is None) == bool(hf.config.tie_word_embeddings)
    back = to_hf(ours, family=type(hf.config))
    assert type(back) is type(hf)
    assert (back.lm_head.weight is back.model.embed_tokens.weight) == bool(hf.config.tie_word_embeddings)
    theirs, again = hf.state_dict(), back.state_dict()
    assert theirs.keys() == again.keys()
    for n, t in theirs.items():
        assert torch.equal(again[n], t) and again[n].data_ptr() != t.data_ptr(), n  # equal copies
    x = tokens(2, 16)
    assert torch.equal(back(x).logits, hf(x).logits)
    for field in ("hidden_size", "num_key_value_heads", "rms_norm_eps", "rope_parameters", "vocab_size"):
        assert getattr(back.config, field) == getattr(hf.config, field), field
    assert getattr(back.config, "head_dim", None) in (getattr(hf.config, "head_dim", None), ours.cfg.head_dim)


@pytest.mark.parametrize("overrides", [{}, {"head_dim": 12, "tie_embeddings": False}, {"qkv_bias": True},
                                       {"qk_norm": True, "qk_norm_eps": 1e-6, "norm_eps": 1e-6, "head_dim": 6}])
def test_ours_to_hf_and_back(overrides):
    torch.manual_seed(0)
    ours = CausalLM(tiny(**overrides)).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.2 * torch.randn_like(p))
    hf = to_hf(ours)
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if ours.cfg.qk_norm else
                                 "Qwen2ForCausalLM" if ours.cfg.qkv_bias else "LlamaForCausalLM")
    again = from_hf(hf)
    assert again.cfg == ours.cfg  # every field, the derived init std of the output projections included
    for n, t in ours.state_dict().items():
        assert torch.equal(again.state_dict()[n], t), n
    x = tokens(2, 12)
    torch.testing.assert_close(hf(x).logits, ours(x).logits, rtol=1e-5, atol=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(MODELS)), heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2, 4]),
       head_dim=st.sampled_from([2, 4, 6, 8, 16]), layers=st.integers(1, 2), tie=st.booleans(), seed=st.integers(0, 9))
def test_any_small_shape_converts_exactly(name, heads, group, head_dim, layers, tie, seed, exact):
    kv = max(1, heads // group)
    hf = hf_model(name, seed, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                  num_hidden_layers=layers, tie_word_embeddings=tie,
                  **({"sliding_window": None} if name == "mistral" else {}))
    ours = from_hf(hf)
    exact(hf, ours)
    x = tokens(1, 7, seed)
    torch.testing.assert_close(ours(x).logits, hf(x).logits, **TIGHT)


def test_sliding_window_caps_max_seq_len():
    hf = hf_model("mistral", sliding_window=8)
    ours = from_hf(hf)
    assert ours.cfg.max_seq_len == 8
    x = tokens(1, 12)
    torch.testing.assert_close(ours(x[:, :8]).logits, hf(x[:, :8]).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds max_seq_len 8"):
        ours(x)
    # ... because past the window HF's attention is not ours: the last position's logits differ
    full = from_hf(hf_model("mistral", sliding_window=None))
    assert not torch.allclose(full(x).logits[:, -1], hf(x).logits[:, -1], atol=1e-3)
    assert from_hf(hf, max_seq_len=4).cfg.max_seq_len == 4
    with pytest.raises(ValueError, match=r"MistralConfig.sliding_window=8 is not supported.*max_seq_len \(12\)"):
        from_hf(hf, max_seq_len=12)
    qwen = hf_model("qwen2", use_sliding_window=True, sliding_window=6, max_window_layers=1)
    assert qwen.config.layer_types[1:] == ["sliding_attention"] * 2 and from_hf(qwen).cfg.max_seq_len == 6
    assert from_hf(hf_model("qwen2", sliding_window=6)).cfg.max_seq_len == 16  # use_sliding_window off


@pytest.mark.parametrize("name, overrides, match", [
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
     r"LlamaConfig.rope_parameters\['rope_type'\]='llama3' is not supported .*supported: 'default'"),
    ("qwen2", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
     "'linear' is not supported"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported by CausalLM; supported: 'silu'"),
    ("llama", {"attention_bias": True}, "LlamaConfig.attention_bias=True is not supported .*supported: False"),
    ("llama", {"mlp_bias": True}, "mlp_bias=True is not supported"),
    ("qwen3", {"attention_bias": True}, "Qwen3Config.attention_bias=True"),
    ("mistral", {"attention_dropout": 0.1}, "attention_dropout=0.1 is not supported .*supported: 0.0"),
])
def test_unsupported_config_features_are_refused(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        from_hf(hf_model(name, **overrides))


def test_per_layer_configs_are_refused():
    hf = hf_model("llama")
    hf.config.per_layer_config = {1: {"intermediate_size": 64}}  # transformers 5.x heterogeneous configs
    with pytest.raises(ValueError, match=r"per_layer_config=\"<overrides of \['intermediate_size'\]>\" is not "
                                         "supported by CausalLM; supported: none"):
        from_hf(hf)


def test_unsupported_classes_are_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    classifier = LlamaForSequenceClassification(hf_model("llama").config)

    class Custom(LlamaForCausalLM):  # a subclass may compute something else
        pass

    for model in (gpt2, classifier, hf_model("llama").model, Custom(hf_model("llama").config)):
        supported = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
        with pytest.raises(ValueError, match=f"cannot convert a {type(model).__name__}: supported classes are "
                                             f"{supported}"):
            from_hf(model)


@pytest.mark.parametrize("cfg, family, match", [
    (tiny("satformer"), None, "to_hf converts the baseline only: strategy 'satformer'"),
    (tiny(peri_norm=True), None, "to_hf needs ModelConfig.peri_norm=False, got True"),
    (tiny(ffn_realloc=True, d_ff=256), None, "ffn_realloc=False"),
    (tiny(qk_norm=True), LlamaConfig, "LlamaConfig needs ModelConfig.qk_norm=False, got True .*Qwen3Config"),
    (tiny(), Qwen3Config, "Qwen3Config needs ModelConfig.qk_norm=True, got False"),
    (tiny(qk_norm=True, qkv_bias=True), None, "Qwen3Config needs ModelConfig.qkv_bias=False.*none has both"),
    (tiny(qk_norm=True, qk_norm_eps=1e-3), None, "qk_norm_eps == norm_eps"),
    (tiny(d_model=30, head_dim=8), None, r"LlamaConfig needs d_model \(30\) divisible by n_heads \(4\)"),
    (tiny(), GPT2Config, "family must be one of"),
])
def test_to_hf_refuses_what_hf_cannot_hold(cfg, family, match):
    with pytest.raises(ValueError, match=match):
        to_hf(CausalLM(cfg), family=family)


def test_to_hf_keeps_dtype_mode_and_config_overrides():
    ours = CausalLM(tiny(d_model=30, head_dim=8)).to(torch.bfloat16).train()
    hf = to_hf(ours, family=MistralConfig, bos_token_id=5)
    assert hf.training and hf.config.bos_token_id == 5 and hf.config.sliding_window is None
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16} and hf.config.dtype == torch.bfloat16
    assert from_hf(hf).rope_cos.dtype == torch.float32  # our RoPE tables never round to a half type


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_every_strategy_runs_on_converted_weights(strategy, options):
    hf = hf_model("qwen3", head_dim=12)
    base = from_hf(hf)
    torch.manual_seed(7)
    ours = from_hf(hf, strategy, **options)
    torch.manual_seed(7)
    fresh = build_strategy(strategy, ours.cfg.dims, **options).double()
    assert ours.cfg.strategy == strategy and dict(ours.cfg.strategy_options) == options
    state, expected = ours.state_dict(), base.state_dict()
    for n, t in expected.items():  # the pretrained weights, where the strategy's blocks have them
        assert torch.equal(state[n], t), n
    for n, t in state.items():
        if n.startswith("strategy."):
            assert torch.equal(t, fresh.state_dict()[n.removeprefix("strategy.")]), n
        elif n not in expected:  # separate q/k/v input norms start as the pretrained input norm
            assert n.endswith(("attn_norm_k.weight", "attn_norm_v.weight")), n
            assert torch.equal(t, state[n.rsplit(".", 2)[0] + ".attn_norm.weight"]), n
    for (n, b), (_, f) in zip(ours.strategy.named_buffers(), fresh.named_buffers()):  # non-persistent too
        assert torch.equal(b, f), n
    x = tokens(1, 9)
    cache = KVCache.allocate(ours.cfg, 1, 9, dtype=torch.float64)
    head, cache = ours(x[:, :5], cache=cache)
    tail, _ = ours(x[:, 5:], cache=cache)
    torch.testing.assert_close(torch.cat((head, tail), 1), ours(x).logits)
    assert math.isfinite(ours(x).logits.sum().item())


def test_which_strategies_start_as_the_converted_model():
    """docs/guides/convert.md: dense, mudd and the static shortcut start exactly as the pretrained
    model, hyper, attnres and mhc nearly, satformer, static, lerp and the gated shortcut change it at once."""
    hf = hf_model("llama")
    x = tokens(2, 12)
    base = from_hf(hf)(x).logits
    for strategy, options in FORMS:
        gap = (from_hf(hf, strategy, **options)(x).logits - base).abs().max().item()
        preserving = options in ({"gate_scale": 0.0}, {"mix_scale": 0.0})  # the HF adapter's exact starts
        if strategy in ("baseline", "dense", "mudd") or (strategy == "shortcut" and not options.get("gate")) or preserving:
            assert gap == 0, (strategy, options)
        elif strategy == "attnres" and options.get("scale_by_sources"):  # the sum of the sources: rounding only
            assert gap < 1e-12, (strategy, options)
        elif strategy in ("hyper", "attnres", "mhc"):
            assert 0 < gap < 1e-3, (strategy, options)
        elif strategy in ("satformer", "static", "lerp", "shortcut", "value_embed"):
            assert gap > 1e-2, (strategy, options)
