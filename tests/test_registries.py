"""One registry per extension point, added to from outside the package: a toy strategy, attention
backend and block registered here run end to end in the bundled model; the custom-model guide
runs every registered strategy."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blocks import BLOCKS, AttentionContext, BlockSpec, TransformerBlock
from recipes import CausalLM, KVCache, ModelConfig, generate, model_config
from recipes.experiments import demo
from recipes.experiments.study_config import PAPER_STRATEGIES
from value_routing import ATTENTION_BACKENDS, STRATEGIES, Registry, Strategy, strategy_options
from value_routing.attention import AttentionMask

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


class ScaledFirstValues(Strategy):
    """A toy value strategy: V' = V + s_n·V1 with one learned scalar per layer (init 0.5)."""

    def __init__(self, n_layers: int, init: float = 0.5) -> None:
        super().__init__(n_layers)
        self.scale = nn.Parameter(torch.full((n_layers,), init))

    def mix_value(self, layer, v, h, state, logits=None):
        if layer == 0:
            return v, v.contiguous()
        return v + self.scale[layer].to(v.dtype) * state, state


CALLS: list[int] = []


def math_attention(q, k, v, mask: AttentionMask):
    """Plain softmax attention from the mask's dense form (GQA by repeating keys and values)."""
    CALLS.append(q.shape[1])
    batch, q_len, heads, head_dim = q.shape
    group = heads // k.shape[2]
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    allowed = mask.dense(q_len, k.shape[1], q.device)
    scores = scores.masked_fill(~allowed.view(-1, 1, q_len, k.shape[1]), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


class ParallelBlock(TransformerBlock):
    """GPT-J's parallel block: attention and MLP read the same normed input, y = x + attn + mlp."""

    def forward(self, inp, strategy, state, ctx: AttentionContext, cache=None):
        h = self.attn_norm(inp.x)
        q, k, v, logits = self.attn.project(h, h, h, strategy.value_projection(self.layer))
        v, state = strategy.mix_value(self.layer, v, h, state, logits=logits)
        a, state = strategy.residual(self.layer, 0, inp.x, self.attn.attend(q, k, v, ctx, cache), state)
        return strategy.residual(self.layer, 1, a, self.ffn(h), state)


@pytest.fixture
def registered():
    """The toy entries, registered for one test and removed after it."""
    STRATEGIES.register("scaled-v1", ScaledFirstValues)
    ATTENTION_BACKENDS.register("math", lambda device: math_attention)
    BLOCKS.register("parallel", ParallelBlock)
    yield
    STRATEGIES.unregister("scaled-v1")
    ATTENTION_BACKENDS.unregister("math")
    BLOCKS.unregister("parallel")


def toy_config(strategy: str = "scaled-v1", **overrides) -> ModelConfig:
    fields = dict(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32, attention_backend="math",
                  block="parallel")
    return model_config("tiny", strategy, **{**fields, **overrides})


def test_toy_entries_run_end_to_end(registered):
    torch.manual_seed(0)
    model = CausalLM(toy_config()).to(F64)
    assert isinstance(model.blocks[1], ParallelBlock) and isinstance(model.strategy, ScaledFirstValues)
    tokens = torch.randint(0, 256, (2, 12))
    # the toy backend computes what SDPA computes
    sdpa = CausalLM(toy_config(attention_backend="sdpa")).to(F64)
    sdpa.load_state_dict(model.state_dict())
    CALLS.clear()
    full = model(tokens).logits
    assert CALLS == [12] * 3  # the registered backend ran, once per layer
    torch.testing.assert_close(full, sdpa(tokens).logits, rtol=1e-10, atol=1e-10)
    # the toy strategy is the equation it claims: V' of layer 2 = V + s_2·V1
    with torch.no_grad():
        model.strategy.scale.zero_()
    plain = CausalLM(toy_config(strategy="baseline")).to(F64)
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(model(tokens).logits, plain(tokens).logits, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        model.strategy.scale.fill_(0.5)
    # decode with the KV cache == full forward
    cache = KVCache.allocate(model.cfg, 2, 12, dtype=F64)
    first, cache = model(tokens[:, :7], cache=cache)
    steps = [first]
    for t in range(7, 12):
        out, cache = model(tokens[:, t : t + 1], cache=cache)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    # it trains: every parameter, the toy's scalars included, gets a gradient
    model(tokens, targets=tokens).backward()
    # (the parallel block leaves its inherited ffn_norm unused)
    assert all(p.grad is not None for n, p in model.named_parameters() if "ffn_norm" not in n)
    assert model.strategy.scale.grad[1:].abs().min() > 0
    assert generate(model, tokens[:, :4], max_new_tokens=3).shape == (2, 7)


def test_the_demo_offers_a_registered_strategy(registered):
    args = demo.parse_args(["--strategies", "baseline", "scaled-v1", "--no-mqar"])
    assert args.strategies == ["baseline", "scaled-v1"]
    assert demo.parse_args([]).strategies == list(PAPER_STRATEGIES)  # the default: the paper's comparison


def test_config_names_the_registered_entries_on_a_typo(registered):
    for field, registry in (("strategy", STRATEGIES), ("attention_backend", ATTENTION_BACKENDS), ("block", BLOCKS)):
        with pytest.raises(ValueError, match=rf"{field} must be one of .*{re.escape(repr(next(iter(registry))))}"):
            ModelConfig(**{field: "nope"})
    with pytest.raises(ValueError, match=r"its options: init"):
        toy_config(strategy_options={"scale": 2.0})
    assert strategy_options("scaled-v1") == {"init": 0.5}
    assert strategy_options("satformer")["act"] == "relu"


def test_registry_refuses_a_second_entry_under_one_name():
    reg: Registry[int] = Registry("thing", "thing")
    assert reg.register("a", 1) == 1
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    assert reg.register("a", 2, replace=True) == 2 and reg["a"] == 2
    with pytest.raises(ValueError, match=r"thing must be one of \('a',\), got 'b'"):
        reg.lookup("b")
    with pytest.raises(KeyError):
        reg["b"]
    assert reg.register("c")(3) == 3 and list(reg) == ["a", "c"] and len(reg) == 2
    assert reg.unregister("c") == 3 and "c" not in reg
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", 4)


def test_block_spec_carries_the_config():
    cfg = model_config("small", "mudd", n_layers=4)
    spec = cfg.block_spec(3, separate_qkv_norms=True)
    assert spec == BlockSpec(3, 768, 12, 12, cfg.d_ff_per_layer[3], True, 1e-6, 1e-5, True)


def test_custom_model_guide_runs_every_registered_strategy():
    """The guide's model, written as a user would, trains every strategy through the protocol."""
    text = (ROOT / "docs" / "guides" / "custom-model.md").read_text()
    code = "\n\n".join(re.findall(r"^```python\n(.*?)^```", text, re.S | re.M))
    namespace: dict = {"__name__": "guide"}
    exec(compile(code, "custom-model.md", "exec"), namespace)
    losses = namespace["losses"]
    assert set(STRATEGIES) <= set(losses) and len(losses) >= len(STRATEGIES) + 3
    assert all(math.isfinite(v) and v < math.log(256) + 1 for v in losses.values()), losses
    assert "halfway" not in STRATEGIES  # the guide's toy is unregistered again
    # the guide's model sends gradients into every strategy parameter, whatever the strategy
    for name in STRATEGIES:
        torch.manual_seed(0)
        model = namespace["GPT"](name)
        tokens = torch.randint(0, 256, (2, 9))
        F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        missing = [n for n, p in model.strategy.named_parameters() if p.grad is None]
        assert not missing, (name, missing)
