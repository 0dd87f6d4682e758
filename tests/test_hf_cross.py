"""The strongest cross-check of the two Hugging Face paths: a model patched in place
(``apply_value_routing``) and the same model converted to our ``CausalLM`` (``from_hf``), both
running one strategy with the same parameters, give the same logits and the same gradient of every
base weight and every strategy parameter, at float64.

The two share only the strategy's module: the blocks, attention, RoPE, norms, cache and the
routing's plumbing are Hugging Face's on one side and ours on the other. Hugging Face computes its
RMSNorms and RoPE angles in float32 even in a float64 model, so (as tests/test_convert.py does)
both are patched to float64 on its side and ours gets exact float64 RoPE tables. The strategy
parameters are perturbed away from their init so that the routing changes the logits.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_convert import exact, hf_model, tokens  # noqa: E402, F401  (exact: the float64 fixture)
from recipes.interop.convert import from_hf, ours_to_hf  # noqa: E402
from value_routing import STRATEGIES, apply_value_routing  # noqa: E402
from value_routing.integrations.hf import routing_of  # noqa: E402

TIGHT = dict(rtol=1e-10, atol=1e-12)
#: value-path strategies (mix_value), then residual-path ones (residual / block_output), with a
#: non-default form where an option takes another code path
FORMS = [
    ("static", {}), ("satformer", {}), ("satformer", {"gate_scale": 0.5, "fuse_projection": True}),
    ("lerp", {}), ("lerp", {"mix_scale": 0.5}), ("value_embed", {}), ("value_embed", {"gate": False}),
    ("dense", {}), ("hyper", {}), ("mhc", {}), ("attnres", {"block_size": 2}), ("attnres", {"scale_by_sources": True}),
    ("shortcut", {"gate": True}),
]
IDS = [s + "".join(f"-{k}={v}" for k, v in o.items()) for s, o in FORMS]
FAMILIES = {"llama": {}, "qwen3": {"head_dim": 12}}  # Qwen3: q/k-norm, head_dim != hidden / heads


def both(family, strategy, options):
    """``(patched HF model, converted CausalLM)`` of one random model, one set of strategy weights."""
    hf = hf_model(family, **FAMILIES[family])
    ours = from_hf(hf, strategy, **options)  # converted from the unpatched model
    apply_value_routing(hf, strategy, preserve_function=False, **options)
    routing = routing_of(hf)
    assert type(routing) is type(ours.strategy)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in routing.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ours.strategy.load_state_dict(routing.state_dict())
    return hf, ours


def grads(model, logits, weight):
    model.zero_grad()
    (logits * weight).sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("strategy", "options"), FORMS, ids=IDS)
def test_patched_and_converted_models_agree_at_float64(family, strategy, options, exact):  # noqa: F811
    hf, ours = both(family, strategy, options)
    exact(hf, ours)
    x = tokens(2, 12)
    theirs_logits, our_logits = hf(x, use_cache=False).logits, ours(x).logits
    plain = hf_model(family, **FAMILIES[family])  # the unpatched model: the routing is live
    assert not torch.allclose(theirs_logits, plain(x).logits, atol=1e-6)
    torch.testing.assert_close(our_logits, theirs_logits, **TIGHT)
    weight = torch.randn(our_logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    theirs, mine = grads(hf, theirs_logits, weight), grads(ours, our_logits, weight)
    mapped = ours_to_hf(mine, ours.cfg)
    prefix = "model.value_routing."
    mapped.update({prefix + n[len("strategy."):]: g for n, g in mine.items() if n.startswith("strategy.")})
    assert mapped.keys() == theirs.keys()
    assert any(n.startswith(prefix) for n in theirs)
    for n, g in theirs.items():
        assert g is not None and mapped[n] is not None, n
        torch.testing.assert_close(mapped[n], g, **TIGHT, msg=n)


def test_every_value_path_strategy_is_cross_checked():
    """Every registered strategy the adapter runs (but the parameter-free baseline) is in FORMS."""
    from value_routing.strategies.base import Strategy, ValueResidual

    value_path = {s for s in STRATEGIES if not STRATEGIES[s].separate_qkv_inputs
                  and (issubclass(STRATEGIES[s], ValueResidual) or STRATEGIES[s].mix_value is not Strategy.mix_value)}
    assert {"static", "satformer", "lerp", "value_embed"} <= value_path
    adapter = {s for s in STRATEGIES if not STRATEGIES[s].separate_qkv_inputs} - {"baseline"}
    assert value_path <= adapter == {s for s, _ in FORMS}  # the residual-path ones too
