"""apply_value_routing: every strategy inside tiny random-init Hugging Face Llama, Mistral, Qwen2,
Qwen3 and Phi-3 models (no downloads), patched in place.

Function-preserving start (float64, exact logits, every new parameter learns), and with the routing
weights perturbed away from their init so the routing matters: decode == full forward, padded ==
one by one (left and right), eager == sdpa, gradient checkpointing == plain, compile == eager,
save_pretrained -> load_value_routed == same logits, generate (greedy, sampling, beam search),
bf16/fp16 casts, a LoRA-wrapped model, and the errors (unsupported model, MUDDFormer, conflicts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from forms import FORM_IDS, FORMS  # noqa: E402
from value_routing import STRATEGIES, SelectiveGate, apply_value_routing, load_value_routed  # noqa: E402
from value_routing.integrations.hf import routing_of  # noqa: E402

#: family -> (config class, model class, config fields of the family's distinctive form)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 5}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 12}),  # q/k-norm, head_dim != hidden / heads
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv_proj, residual dropouts
}
VOCAB = 61


def preservable(strategy: str, options: dict) -> bool:
    try:
        STRATEGIES[strategy].preserving_options(options)
    except ValueError:
        return False
    return True


#: Every strategy form of tests/forms.py the adapter runs (MUDDFormer's separate q/k/v inputs are refused).
HF_FORMS = [(f, i) for f, i in zip(FORMS, FORM_IDS) if not STRATEGIES[f[0]].separate_qkv_inputs]
PRESERVED = [(f, i) for f, i in HF_FORMS if preservable(*f)]
DEFAULTS = [((s, {}), s) for s in sorted(STRATEGIES) if not STRATEGIES[s].separate_qkv_inputs]
#: Parameters whose gradient is 0 on the first backward at the preserving start, by design: they
#: multiply a factor that starts at 0 (SATFormer's W_α and the lerp gate's W, b: their scale; HC's
#: s_α, s_β and norm scale: tanh(H W) with W = 0; mHC's α: its φ = 0; AttnRes's key-norm scale: its
#: query; the value embeddings' gate: the zero tables). One optimizer step later they learn.
SECOND_STEP = {"satformer": ("gates.",), "hyper": ("scales.", "norm_scale."), "mhc": ("scales.",),
               "lerp": ("gates.",), "attnres": ("key_scales.",), "value_embed": ("gates.",)}


def grid(forms):
    """Every form on Llama and Phi-3 (separate and fused QKV), SATFormer and HC on every family."""
    cases = [(fam, *f) for fam in ("llama", "phi3") for f in forms]
    cases += [(fam, *f) for fam in FAMILIES if fam not in ("llama", "phi3") for f in forms
              if f[0][0] in ("satformer", "hyper")]
    return [pytest.param(fam, form, id=f"{fam}-{ident}") for fam, form, ident in cases]


def model(family: str, dtype=torch.float64, attn="sdpa", n_layers: int = 3, seed: int = 0, **overrides):
    config_cls, model_cls, fields = FAMILIES[family]
    cfg = getattr(transformers, config_cls)(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        attn_implementation=attn, **{**fields, **overrides},
    )
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(cfg).to(dtype).eval()


def routed(family: str, strategy: str, options: dict, perturb: bool = True, **kw):
    """A patched model (the preserving start where the form has one) with its routing weights
    perturbed, so that the routing changes the logits."""
    m = apply_value_routing(model(family, **kw), strategy, preserve_function=preservable(strategy, options), **options)
    if perturb:
        with torch.no_grad():
            for p in routing_of(m).parameters():
                p.add_(0.3 * torch.randn_like(p))
    return m


def tokens(batch=2, seq=8, seed=0):
    return torch.randint(2, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(m, ids, **kw):
    with torch.no_grad():
        return m(ids, use_cache=False, **kw).logits


def check_live(m, family, ids):
    """The perturbed routing changes the logits (except the baseline's), so equalities below can fail."""
    if routing_of(m).__class__.__name__ != "NoReuse":
        assert not torch.allclose(logits(m, ids), logits(model(family), ids), atol=1e-6)


# ---------------------------------------------------------------- function-preserving start


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("form", [f for f, _ in PRESERVED], ids=[i for _, i in PRESERVED])
def test_preserving_start_keeps_logits_and_every_parameter_learns(family, form):
    strategy, options = form
    ids = tokens()
    m = apply_value_routing(model(family), strategy, **options)
    plain = model(family)
    if strategy in ("hyper", "mhc"):  # the summed streams are rate × the stream: the final norm's ε reads ε / rate²
        plain.model.norm.variance_epsilon /= routing_of(m).rate ** 2
    before = logits(plain, ids)
    out = m(ids, labels=ids, use_cache=False)
    if strategy == "mhc":  # its read weights σ(b) sum to 1 only up to b's float32 rounding, and HF's
        # norms compute in float32: a sublayer reads (1 + δ)·x, rounded there at float32's 6e-8
        torch.testing.assert_close(out.logits, before, rtol=1e-6, atol=1e-7)
    elif strategy == "attnres":  # n · (1/n) rounds for an n not a power of two: equal up to float64's rounding
        torch.testing.assert_close(out.logits, before, rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(out.logits, before)  # exact: float64, powers of two in the hyper case
    out.loss.backward()
    params = dict(routing_of(m).named_parameters())
    late = {n for n in params if n.startswith(SECOND_STEP.get(strategy, ()))}
    assert all(params[n].grad is not None and bool(params[n].grad.isfinite().all()) for n in params)
    assert {n for n, p in params.items() if not p.grad.any()} == late
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    m.zero_grad()
    m(ids, labels=ids, use_cache=False).loss.backward()
    assert all(p.grad.any() for p in params.values())


@pytest.mark.parametrize("strategy", [s for (s, _), _ in DEFAULTS])
def test_every_strategy_declares_its_preserving_start(strategy):
    """At its defaults (forms above whose options rule a start out are left out of the test above)."""
    assert isinstance(STRATEGIES[strategy].preserving_options({}), dict)


def test_gate_scale_is_the_satformer_start_and_its_math():
    gate = SelectiveGate(d_model=8, n_layers=3, n_kv_heads=2, **SelectiveGate.preserving_options({}))
    v, v1, h = torch.randn(2, 5, 2, 4), torch.randn(2, 5, 2, 4), torch.randn(2, 5, 8)
    assert torch.equal(gate.mix_v1(1, v, v1, h), v)
    with pytest.raises(ValueError, match="gate_scale=0.0"):
        SelectiveGate.preserving_options({"gate_scale": 0.5})


@given(act=st.sampled_from(["relu", "sigmoid", "tanh", "softmax"]), scale=st.floats(-2, 2), bias=st.booleans())
def test_gate_scale_multiplies_the_gate(act, scale, bias):
    from value_routing.kernels.gate_mix import gate_activation

    gate = SelectiveGate(d_model=8, n_layers=3, n_kv_heads=2, act=act, gate_scale=scale,
                         bias_init=0.5 if bias else None).double()
    s = torch.tensor([scale, -0.5], dtype=torch.float64)  # a head of its own: the scale is per head
    with torch.no_grad():
        gate.gate_scales[1].copy_(s)
    v, v1, h = (torch.randn(*shape, dtype=torch.float64) for shape in ((2, 5, 2, 4), (2, 5, 2, 4), (2, 5, 8)))
    alpha = s * gate_activation(gate.gates[1](h), act)
    torch.testing.assert_close(gate.mix_v1(2, v, v1, h), v + alpha[..., None] * v1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gate.gate(2, h), alpha, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [True, "0", [0.0]])
def test_gate_scale_must_be_a_number(bad):
    with pytest.raises(ValueError, match="gate_scale"):
        SelectiveGate(d_model=8, n_layers=3, n_kv_heads=2, gate_scale=bad)


@given(scale=st.floats(-2, 2), bias=st.floats(-3, 3))
def test_mix_scale_scales_the_lerp_weight(scale, bias):
    from value_routing import LerpValueResidual

    mix = LerpValueResidual(d_model=8, n_layers=3, n_kv_heads=2, mix_scale=scale, bias_init=bias).double()
    s = torch.tensor([scale, -0.5], dtype=torch.float64)  # a head of its own: the scale is per head
    with torch.no_grad():
        mix.mix_scales[1].copy_(s)
    v, v1, h = (torch.randn(*shape, dtype=torch.float64) for shape in ((2, 5, 2, 4), (2, 5, 2, 4), (2, 5, 8)))
    mu = torch.sigmoid(mix.gates[1](h))
    want = v + (s * (1 - mu))[..., None] * (v1 - v)
    torch.testing.assert_close(mix.mix_v1(2, v, v1, h), want, rtol=1e-12, atol=1e-12)
    start = LerpValueResidual(d_model=8, n_layers=3, n_kv_heads=2, **LerpValueResidual.preserving_options({}))
    assert torch.equal(start.mix_v1(1, v.float(), v1.float(), h.float()), v.float())


@pytest.mark.parametrize("bad", [True, "0", [0.0], float("inf")])
def test_mix_scale_must_be_a_number(bad):
    from value_routing import LerpValueResidual

    with pytest.raises(ValueError, match="mix_scale"):
        LerpValueResidual(d_model=8, n_layers=3, n_kv_heads=2, mix_scale=bad)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_scale_by_sources_must_be_a_bool(bad):
    from value_routing import AttentionResiduals

    with pytest.raises(ValueError, match="scale_by_sources"):
        AttentionResiduals(d_model=8, n_layers=2, scale_by_sources=bad)


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_scale_by_sources_makes_the_uniform_start_the_sum(block_size):
    """At zero queries a mix of n sources times n is their sum: x0 + every output so far."""
    from value_routing import AttentionResiduals

    res = AttentionResiduals(d_model=8, n_layers=3, block_size=block_size, scale_by_sources=True).double()
    x0 = torch.randn(2, 5, 8, dtype=torch.float64)
    inp, state = res.init_state(x0)
    total = x0
    for layer in range(3):
        for sub in (0, 1):
            out = torch.randn(2, 5, 8, dtype=torch.float64)
            total = total + out
            h, state = res.residual(layer, sub, inp.x, out, state)
            torch.testing.assert_close(h, total, rtol=1e-13, atol=1e-13)
    plain = AttentionResiduals(d_model=8, n_layers=1, block_size=block_size)
    _, st0 = plain.init_state(x0)
    h, _ = plain.double().residual(0, 0, x0, 3 * x0, st0)  # the paper's start: the mean of x0 and o_0 = 3 x0
    torch.testing.assert_close(h, 2 * x0, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("strategy", "options", "named"), [
    ("lerp", {"mix_scale": 1.0}, "mix_scale=0.0"), ("attnres", {"scale_by_sources": False}, "scale_by_sources=True"),
    ("shortcut", {"x0_norm": True}, "x0_norm=False"), ("shortcut", {"x0_init": 0.5}, "x0_init=0.0"),
    ("value_embed", {"init_std": 0.01}, "init_std=0.0"),
])
def test_new_strategies_refuse_options_that_rule_the_start_out(strategy, options, named):
    with pytest.raises(ValueError, match=f"{named}.*preserve_function=False"):
        apply_value_routing(model("llama"), strategy, **options)


def test_preserving_start_refuses_conflicting_options():
    with pytest.raises(ValueError, match="lambda1=0.0.*preserve_function=False"):
        apply_value_routing(model("llama"), "static", lambda1=0.5)
    with pytest.raises(ValueError, match="softmax.*preserve_function=False"):
        apply_value_routing(model("llama"), "static", mode="softmax")
    m = apply_value_routing(model("llama"), "static", preserve_function=False, lambda1=0.5)
    assert m.config.value_routing == {"strategy": "static", "options": {"lambda1": 0.5}}


# ---------------------------------------------------------------- the strategy's math, by hooks on the plain model


def hooked_reference(family: str, strategy: str, routing, ids):
    """The unpatched model's logits with the strategy's equation written into forward hooks: on the
    value projection (V' from the projection's input h and layer 0's raw values), or, for DenseFormer,
    on each decoder layer's output (Y_i = Σ_j α_ij X_j, X_0 the embedding)."""
    plain = model(family)
    attn = plain.model.layers[0].self_attn
    width = plain.config.num_key_value_heads * attn.head_dim
    seen = []

    def mix(i):
        def hook(module, args, out):
            v = out[..., -width:].unflatten(-1, (-1, attn.head_dim))
            seen.append(v)
            if i == 0:
                return None
            if strategy == "static":
                new = routing.lambda1[i - 1] * seen[0] + routing.lambda2[i - 1] * v
            else:
                alpha = routing.gate_scales[i - 1] * torch.relu(args[0] @ routing.gates[i - 1].weight.T)
                new = v + alpha[..., None] * seen[0]
            return torch.cat([out[..., :-width], new.flatten(-2)], -1)
        return hook

    def aggregate(i):
        def hook(module, args, out):
            seen.append(out)
            return sum(a * x for a, x in zip(routing.alphas[i], seen))
        return hook

    for i, layer in enumerate(plain.model.layers):
        if strategy == "dense":
            layer.register_forward_hook(aggregate(i))
        else:
            proj = layer.self_attn.qkv_proj if family == "phi3" else layer.self_attn.v_proj
            proj.register_forward_hook(mix(i))
    if strategy == "dense":
        plain.model.embed_tokens.register_forward_hook(lambda module, args, out: seen.append(out))
    return logits(plain, ids)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["static", "satformer", "dense"])
def test_patched_model_runs_the_strategys_equation(family, strategy):
    m, ids = routed(family, strategy, {}), tokens()
    check_live(m, family, ids)
    torch.testing.assert_close(logits(m, ids), hooked_reference(family, strategy, routing_of(m), ids),
                               rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- behaviour with the routing live


@pytest.mark.parametrize(("family", "form"), grid(HF_FORMS))
def test_decode_matches_full_forward(family, form):
    m, ids = routed(family, *form), tokens()
    check_live(m, family, ids)
    full = logits(m, ids)
    with torch.no_grad():
        out = m(ids[:, :5], use_cache=True)
        steps = [out.logits]
        for t in range(5, ids.shape[1]):
            out = m(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("family", "form"), grid(DEFAULTS))
def test_padded_batch_matches_one_by_one(family, form, side):
    # eager attention takes its softmax in float32, whose -inf turns float64 padding rows into NaN
    # (unpatched too): sdpa here, eager in test_eager_matches_sdpa
    m = routed(family, *form)
    rows = [tokens(1, 7, seed=1)[0], tokens(1, 4, seed=2)[0]]
    ids, mask = torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(7 - len(row), 7) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    out = logits(m, ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    for i, row in enumerate(rows):
        torch.testing.assert_close(out[i][mask[i].bool()], logits(m, row[None])[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["satformer", "hyper", "dense"])
def test_eager_matches_sdpa(family, strategy):
    ids = tokens()
    eager, sdpa = (routed(family, strategy, {}, dtype=torch.float32, attn=a) for a in ("eager", "sdpa"))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, in float32 (see test_padded_batch_matches_one_by_one)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    torch.testing.assert_close(logits(eager, ids, attention_mask=mask, position_ids=pos)[real],
                               logits(sdpa, ids, attention_mask=mask, position_ids=pos)[real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("family", "form"), grid(DEFAULTS))
def test_gradient_checkpointing_matches_plain(family, form):
    ids, grads = tokens(), []
    for ckpt in (False, True):
        m = routed(family, *form).train()
        if ckpt:
            m.gradient_checkpointing_enable()
        calls = []
        hooks = [layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in m.model.layers]
        m(ids, labels=ids).loss.backward()
        for hook in hooks:
            hook.remove()
        assert len(calls) == (2 if ckpt else 1) * len(m.model.layers)  # recomputed when checkpointed
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-13, msg=name)


def test_reentrant_checkpointing_is_refused():
    m = routed("llama", "hyper", {}).train()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant=False"):
        m(tokens(), labels=tokens())


@pytest.mark.parametrize(("family", "strategy"), [("llama", s) for (s, _), _ in DEFAULTS] + [("phi3", "satformer")])
def test_compile_matches_eager(family, strategy, fresh_dynamo):
    options = {}
    m, ids = routed(family, strategy, options, n_layers=2), tokens()
    eager = m(ids, labels=ids, use_cache=False)
    eager.loss.backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    out = torch.compile(m, backend="aot_eager", fullgraph=True)(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-10, atol=1e-12)
    for name, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize(("family", "form"), grid(HF_FORMS))
def test_save_pretrained_then_load_value_routed(family, form, tmp_path):
    m, ids = routed(family, *form), tokens()
    m.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["value_routing"]
    assert saved == {"strategy": form[0], "options": m.config.value_routing["options"]}
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert {k for k in f.keys() if ".value_routing." in k} == {
            "model.value_routing." + n for n in routing_of(m).state_dict()}
    back = load_value_routed(str(tmp_path))
    assert type(routing_of(back)) is type(routing_of(m))
    assert torch.equal(logits(back, ids), logits(m, ids))


def test_load_value_routed_refuses_a_plain_checkpoint(tmp_path):
    model("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="records no value routing"):
        load_value_routed(str(tmp_path))


@pytest.mark.parametrize("form", [f for f, _ in DEFAULTS], ids=[i for _, i in DEFAULTS])
def test_generate_greedy_sample_beam_with_the_models_cache(form):
    m = routed("llama", *form)
    prompt = tokens(2, 4)
    for kw in ({"do_sample": False}, {"do_sample": True, "top_k": 5}, {"do_sample": False, "num_beams": 3}):
        runs = []
        for use_cache in (True, False):  # the cache holds the mixed values: decoding with it changes nothing
            torch.manual_seed(3)
            runs.append(m.generate(prompt, max_new_tokens=4, min_new_tokens=4, use_cache=use_cache, **kw))
        assert torch.equal(runs[0], runs[1]), kw
    # left-padded prompts continue as they would alone
    rows, pad = [tokens(1, 5, seed=4)[0], tokens(1, 3, seed=5)[0]], 0
    ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 5 - len(row):], mask[i, 5 - len(row):] = row, 1
    batch = m.generate(ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=pad)
    for i, row in enumerate(rows):
        alone = m.generate(row[None], max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=pad)
        assert torch.equal(batch[i, 5:], alone[0, len(row):])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("strategy", ["satformer", "hyper", "dense", "static"])
def test_half_precision_cast_runs(dtype, strategy):
    m, ids = routed("llama", strategy, {}, dtype=torch.float32), tokens()
    want = logits(m, ids)
    m.to(dtype)
    assert all(p.dtype == dtype for p in routing_of(m).parameters())
    out = m(ids, labels=ids, use_cache=False)
    out.loss.backward()
    assert out.logits.dtype == dtype and bool(out.logits.isfinite().all())
    assert all(p.grad.isfinite().all() for p in routing_of(m).parameters())
    torch.testing.assert_close(out.logits.float(), want, rtol=0.05, atol=0.02)


def test_lora_wrapped_model(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is not installed (pip install 'value_routing[dev]')")
    ids = tokens()
    lora = peft.get_peft_model(model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = logits(lora, ids)
    apply_value_routing(lora, "satformer")  # after wrapping: the routing trains, the base stays frozen
    out = lora(input_ids=ids, labels=ids, use_cache=False)
    assert torch.equal(out.logits, before)
    out.loss.backward()
    trained = {n for n, p in lora.named_parameters() if p.grad is not None and p.grad.any()}
    assert any("lora_B" in n for n in trained) and any("value_routing.gate_scales" in n for n in trained)
    assert all(p.grad is None for n, p in lora.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        for p in [*routing_of(lora).parameters(), *(p for n, p in lora.named_parameters() if "lora_B" in n)]:
            p.add_(0.3 * torch.randn_like(p))
    want = logits(lora, ids)
    merged = lora.merge_and_unload()  # the routing stays: saved with the merged model
    merged.save_pretrained(tmp_path)
    torch.testing.assert_close(logits(load_value_routed(str(tmp_path)), ids), want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- errors


def test_unsupported_model_names_the_supported_families():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    with pytest.raises(ValueError, match=r"Llama \(LlamaModel\), Mistral.*Phi-3 \(Phi3Model\).*got a GPT2Model"):
        apply_value_routing(gpt2, "satformer")


def test_foreign_layer_is_refused():
    m = model("llama")
    m.model.layers[1] = model("mistral").model.layers[1]
    with pytest.raises(ValueError, match="layer 1 of the Llama model is a MistralDecoderLayer"):
        apply_value_routing(m, "satformer")


def test_mudd_is_refused_for_its_separate_qkv_inputs():
    with pytest.raises(ValueError, match="'mudd' routes separate query/key/value inputs"):
        apply_value_routing(model("llama"), "mudd")


def test_patching_twice_and_positional_arguments_are_errors():
    m = apply_value_routing(model("llama"), "satformer")
    with pytest.raises(ValueError, match="already runs value routing"):
        apply_value_routing(m, "dense")
    with pytest.raises(TypeError, match="by keyword"):
        m.model(tokens(), torch.ones(2, 8))


def test_importing_value_routing_imports_no_transformers():
    code = "import sys, value_routing; from value_routing import apply_value_routing; " \
           "sys.exit('transformers' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# ---------------------------------------------------------------- the benchmark recipe


def test_bench_smoke(tmp_path):
    from recipes.bench import hf_patch

    report = hf_patch.main(["--quick", "--threads", "1", "--strategies", "satformer", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["unpatched", "satformer"] == [r["variant"] for r in report["rows"]]
    for key in ("train_time", "memory", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert rows[0][f"rel_{key}"] == 1.0 and rows[1][f"rel_{key}"] > 0
