"""The attention options converted checkpoints need: an explicit ``head_dim`` (Qwen3: attention
width ``n_heads * head_dim`` apart from ``d_model``) and ``qkv_bias`` (Qwen2's q/k/v biases),
through every model path — decode, padding, compile, the HF config, study keys, validation —
beside the float64 reference-model cases in test_reference_model.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.experiments import study
from recipes.lm.model import CausalLM, KVCache
from forms import assert_compile_matches_eager, assert_decode_and_padding_match
from test_model import model_for, tiny, tokens

OPTIONS = [{"qkv_bias": True}, {"head_dim": 12}, {"head_dim": 6, "qkv_bias": True, "qk_norm": True}]
# baseline; SATFormer's gate rows fused into the QKV GEMM (zero bias rows beside them); MUDDFormer's
# separate q/k/v inputs (the split bias)
STRATEGIES = [("baseline", {}), ("satformer", {"fuse_projection": True}), ("mudd", {"form": "authors"})]


def biased(cfg):
    """``model_for`` with the (zero-initialised) q/k/v bias made non-trivial."""
    model = model_for(cfg)
    with torch.no_grad():
        for block in model.blocks:
            if block.attn.wqkv.bias is not None:
                block.attn.wqkv.bias.normal_(std=0.5)
    return model


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("strategy, options", STRATEGIES)
def test_decode_and_padding_equal_the_full_forward(opts, strategy, options):
    cfg = tiny(strategy, options, **opts)
    model = biased(cfg)
    assert KVCache.allocate(cfg, 2, 10).layers[0].k.shape == (2, 10, cfg.n_kv_heads, cfg.head_dim)
    assert_decode_and_padding_match(model, cfg, tokens(2, 10), side="right")


def test_compile_fullgraph_matches_eager(fresh_dynamo):
    model = biased(tiny("satformer", {"fuse_projection": True}, head_dim=6, qkv_bias=True, n_layers=2)).train()
    assert_compile_matches_eager(model, tokens(2, 8))


def test_the_options_shape_the_attention_and_default_to_todays_model():
    plain = CausalLM(tiny())
    assert plain.cfg.head_dim == 8 and plain.cfg.dims.head_dim == 8 and not plain.cfg.qkv_bias
    assert all(b.attn.wqkv.bias is None for b in plain.blocks)
    wide = CausalLM(tiny(head_dim=12, qkv_bias=True))  # 4 heads × 12 = 48 ≠ d_model 32
    attn = wide.blocks[0].attn
    assert attn.wqkv.weight.shape == ((4 + 2 * 2) * 12, 32) and attn.wo.weight.shape == (32, 48)
    assert wide.cfg.dims.head_dim == 12 and wide.rope_cos.shape == (32, 6)
    assert torch.equal(attn.wqkv.bias, torch.zeros(96))  # zero at init: the same function as no bias
    extra = set(dict(wide.named_parameters())) - set(dict(CausalLM(tiny(head_dim=12)).named_parameters()))
    assert extra == {f"blocks.{i}.attn.wqkv.bias" for i in range(3)}
    # an explicit head_dim frees d_model from divisibility by n_heads
    assert CausalLM(tiny(d_model=30, head_dim=8)).blocks[0].attn.q_dim == 32


def test_the_bias_changes_q_k_and_v():
    cfg = tiny(qkv_bias=True)
    x = tokens(1, 6)
    for part in range(3):  # q, k and v rows each matter
        model = model_for(cfg)
        base = model(x).logits
        with torch.no_grad():
            for block in model.blocks:
                q, kv = block.attn.q_dim, block.attn.kv_dim
                start, stop = ((0, q), (q, q + kv), (q + kv, q + 2 * kv))[part]
                block.attn.wqkv.bias[start:stop] = 0.7
        assert not torch.allclose(model(x).logits, base), part


def test_hf_config_round_trip_and_study_keys(tmp_path):
    pytest.importorskip("transformers")
    from recipes.interop.hf import ValueRoutingConfig, ValueRoutingForCausalLM

    cfg = tiny(head_dim=6, qkv_bias=True)
    hf = ValueRoutingForCausalLM(ValueRoutingConfig.from_model_config(cfg))
    hf.save_pretrained(tmp_path)
    again = ValueRoutingForCausalLM.from_pretrained(tmp_path)
    assert again.model.cfg == cfg
    for name, p in hf.model.state_dict().items():
        assert torch.equal(p, again.model.state_dict()[name]), name
    assert "head_dim" not in study.model_spec(tiny()) and "qkv_bias" not in study.model_spec(tiny())
    assert study.model_spec(tiny(head_dim=8)) == study.model_spec(tiny())  # the derived value is neutral
    assert study.model_spec(cfg)["head_dim"] == 6 and study.model_spec(cfg)["qkv_bias"] is True


@given(st.one_of(st.integers(-4, 1), st.integers(0, 20).map(lambda n: 2 * n + 1)))
def test_bad_head_dims_name_the_field(value):
    with pytest.raises(ValueError, match=f"head_dim must be an even integer >= 2 .*got {value}"):
        tiny(head_dim=value)


@pytest.mark.parametrize("value", [8.0, True, "8"])
def test_non_integer_head_dims_name_the_field(value):
    with pytest.raises(ValueError, match=f"head_dim must be an integer or None, got {value!r}"):
        tiny(head_dim=value)


def test_other_bad_values_name_the_field():
    with pytest.raises(ValueError, match="qkv_bias must be True or False, got 1"):
        tiny(qkv_bias=1)
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\) unless head_dim is given"):
        tiny(d_model=30)
