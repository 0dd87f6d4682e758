"""Hugging Face interop: config round trip, save/load parity, tied head, generate() parity."""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # nothing here may touch the network

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from recipes.lm.builders import model_config, satformer  # noqa: E402
from value_routing import STRATEGIES  # noqa: E402
from recipes.lm.generate import generate  # noqa: E402
from recipes.interop.hf import ValueRoutingConfig, ValueRoutingForCausalLM  # noqa: E402
from recipes.lm.model import CausalLM  # noqa: E402

DIMS = dict(vocab_size=256, d_model=32, n_layers=3, n_heads=2, n_kv_heads=1, max_seq_len=96)


def tiny(strategy: str = "satformer", **overrides) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(model_config("tiny", strategy, **{**DIMS, **overrides})).eval()
    with torch.no_grad():  # an initialised model's greedy choice barely depends on the context
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_config_round_trip_and_auto_registration(tmp_path):
    cfg = satformer("tiny", **DIMS, qk_norm=True, last_k=2, act="sigmoid")
    hf_cfg = ValueRoutingConfig.from_model_config(cfg)
    assert hf_cfg.to_model_config() == cfg
    assert (hf_cfg.hidden_size, hf_cfg.num_hidden_layers, hf_cfg.max_position_embeddings) == (32, 3, 96)
    hf_cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is ValueRoutingConfig and loaded.model_type == "value_routing"
    assert loaded.to_model_config() == cfg
    assert isinstance(AutoConfig.for_model("value_routing"), ValueRoutingConfig)


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="strategy must be one of"):
        ValueRoutingConfig(strategy="nope")
    with pytest.raises(ValueError, match="n_heads"):
        ValueRoutingConfig(d_model=30, n_heads=4)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("tie", [True, False])
def test_save_load_gives_identical_logits(tmp_path, strategy, tie):
    model = tiny(strategy, tie_embeddings=tie)
    hf = ValueRoutingForCausalLM.from_causal_lm(model)
    hf.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert ("model.lm_head.weight" in keys) is not tie
    assert keys == {f"model.{k}" for k in model.state_dict()}

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is ValueRoutingForCausalLM
    assert loaded.config.to_model_config() == model.cfg and loaded.config.tie_word_embeddings is tie
    tokens = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)
    # The tie survives: one (vocab, d_model) matrix, which is both the input and output embedding.
    assert loaded.model.num_params() == model.num_params()
    if tie:
        assert loaded.get_output_embeddings() is None and loaded.model.lm_head is None
    else:
        assert not torch.equal(loaded.model.lm_head.weight, loaded.model.embed.weight)


def test_checkpoint_missing_a_weight_is_refused(tmp_path):
    ValueRoutingForCausalLM.from_causal_lm(tiny()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing weights.*model.norm.weight"):
        ValueRoutingForCausalLM.from_pretrained(tmp_path)


def test_generate_greedy_equals_recipes_generate_and_uses_the_kv_cache():
    model = tiny()
    hf = ValueRoutingForCausalLM.from_causal_lm(model).eval()
    prompt = torch.randint(0, 256, (2, 5))
    calls = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((args[0].shape[1], kwargs.get("cache") is not None)), with_kwargs=True
    )
    # 70 new tokens outgrow the first cache allocation (64 positions), exercising its growth.
    out = hf.generate(prompt, max_new_tokens=70, do_sample=False)
    hook.remove()
    assert torch.equal(out, generate(model, prompt, 70))
    assert calls[0] == (5, True) and set(calls[1:]) == {(1, True)}  # prefill, then one token per step
    no_cache = hf.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(no_cache, out[:, :17])


def test_beam_search_with_cache_equals_without():
    hf = ValueRoutingForCausalLM.from_causal_lm(tiny()).eval()
    prompt = torch.randint(0, 256, (2, 4))
    with_cache = hf.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False)
    without = hf.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_labels_give_the_shifted_next_token_loss():
    model = tiny()
    hf = ValueRoutingForCausalLM.from_causal_lm(model)
    tokens = torch.randint(0, 256, (2, 9))
    labels = tokens.clone()
    labels[0, 3] = -100
    logits = model(tokens).logits
    keep = labels[:, 1:] != -100
    want = F.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    torch.testing.assert_close(hf(tokens, labels=labels).loss, want)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_padded_generate_and_forward_equal_each_prompt_alone(strategy):
    model = tiny(strategy).double()
    hf = ValueRoutingForCausalLM.from_causal_lm(model).eval()
    prompts = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (6, 2, 4)]
    batch = torch.zeros(3, 6, dtype=torch.long)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding, the generate() convention
        batch[row, 6 - len(p) :], mask[row, 6 - len(p) :] = p, 1
    out = hf.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    no_cache = hf.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=False)
    logits = hf(batch, attention_mask=mask).logits
    for row, p in enumerate(prompts):
        alone = generate(model, p[None], 8)[0, len(p) :]
        assert torch.equal(out[row, 6:], alone) and torch.equal(no_cache[row, 6:], alone)
        torch.testing.assert_close(logits[row, 6 - len(p) :], model(p[None]).logits[0], rtol=1e-10, atol=1e-10)


def test_bad_inputs_and_foreign_caches_are_rejected():
    hf = ValueRoutingForCausalLM.from_causal_lm(tiny())
    prompt = torch.randint(0, 256, (2, 4))
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, vocab_size\) = \[0, 256\), got 300"):
        hf(torch.tensor([[300, 1]]))
    with pytest.raises(ValueError, match="tokens must have an integer dtype"):
        hf(prompt.float())
    with pytest.raises(ValueError, match="tokens must be ids"):
        hf.generate(torch.tensor([[5, 256]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        hf(prompt, attention_mask=torch.full_like(prompt, 2))
    with pytest.raises(ValueError, match="hold only padding"):
        hf(prompt, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="past_key_values must be a ValueRoutingCache"):
        hf(prompt, past_key_values=object())
    with pytest.raises(ValueError, match="output_hidden_states=True is not supported"):
        hf(prompt, output_hidden_states=True)
