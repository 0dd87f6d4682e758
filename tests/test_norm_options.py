"""The plain Transformer's normalization options (the evidence issue's layer-wise baselines):
LayerNorm Scaling and Peri-LN through every model path — decode, padding, compile, the HF config,
study keys — beside the float64 reference-model cases in test_reference_model.py."""

import math

import pytest
import torch

from recipes.experiments import study
from forms import assert_compile_matches_eager, assert_decode_and_padding_match
from recipes.lm.model import CausalLM
from test_model import model_for, tiny, tokens

OPTIONS = [{"layernorm_scaling": True}, {"peri_norm": True}, {"layernorm_scaling": True, "peri_norm": True}]


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("strategy", ["baseline", "satformer", "hyper"])
def test_decode_and_padding_equal_the_full_forward(opts, strategy):
    cfg = tiny(strategy, **opts)
    assert_decode_and_padding_match(model_for(cfg), cfg, tokens(2, 10))


def test_compile_fullgraph_matches_eager(fresh_dynamo):
    model = model_for(tiny("satformer", layernorm_scaling=True, peri_norm=True, n_layers=2)).train()
    assert_compile_matches_eager(model, tokens(2, 8))


def test_the_options_change_the_function_as_stated():
    base = model_for(tiny())
    scaled = CausalLM(tiny(layernorm_scaling=True)).double()
    scaled.load_state_dict(base.state_dict())
    assert [b.norm_scale for b in scaled.blocks] == [1 / math.sqrt(i + 1) for i in range(3)]
    x = tokens(1, 6)
    assert not torch.allclose(scaled.eval()(x).logits, base(x).logits)
    peri = CausalLM(tiny(peri_norm=True))
    extra = {n for n in dict(peri.named_parameters())} - {n for n in dict(CausalLM(tiny()).named_parameters())}
    assert extra == {f"blocks.{i}.{k}_out_norm.weight" for i in range(3) for k in ("attn", "ffn")}
    assert peri.num_params() - CausalLM(tiny()).num_params() == 2 * 32 * 3


def test_hf_config_round_trip_and_study_keys(tmp_path):
    pytest.importorskip("transformers")
    from recipes.interop.hf import ValueRoutingConfig, ValueRoutingForCausalLM

    cfg = tiny(peri_norm=True, layernorm_scaling=True)
    hf = ValueRoutingForCausalLM(ValueRoutingConfig.from_model_config(cfg))
    hf.save_pretrained(tmp_path)
    again = ValueRoutingForCausalLM.from_pretrained(tmp_path)
    assert again.model.cfg.peri_norm and again.model.cfg.layernorm_scaling
    assert {k: study.ADDED_FIELDS[k] for k in ("layernorm_scaling", "peri_norm")} == {"layernorm_scaling": False,
                                                                                      "peri_norm": False}


@pytest.mark.parametrize("field", ["layernorm_scaling", "peri_norm"])
def test_non_bool_values_name_the_field(field):
    with pytest.raises(ValueError, match=f"{field} must be True or False, got 1"):
        tiny(**{field: 1})
