"""ValueEmbeddings against its equation (a plain per-token, per-head loop), its init, its table
sharing, its layer patterns over depth and its options."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.lm.builders import count_params, model_config, transformer, value_embeddings
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from recipes.train.optim import OptimConfig, make_optimizer
from value_routing import ModelDims, ValueEmbeddings, build_strategy, strategy_options
from value_routing.strategies.value_embeddings import table_layout

F64 = torch.float64


def strategy(n_layers=4, n_heads=4, n_kv_heads=2, head_dim=4, vocab=11, perturb=True, **options):
    s = ValueEmbeddings(d_model=n_heads * head_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                        vocab_size=vocab, **options).double()
    if perturb:
        with torch.no_grad():
            for p in s.parameters():
                p.add_(0.5 * torch.randn_like(p))
    return s


def loop_mix(s, layer, v, h, tokens):
    """``V' = V + g ⊙ E[t]`` by the equation, one position and one kv-head at a time."""
    table_index = s.table_of[layer]
    if table_index is None:
        return v.clone()
    table = s.tables[table_index].detach()
    k = s.gate_width
    out = torch.empty_like(v)
    batch, seq, kv, d = v.shape
    for b in range(batch):
        for t in range(seq):
            e = table[int(tokens[b, t])]  # the flat row (kv·d)
            for head in range(kv):
                g = 1.0
                if s.gate:
                    w = s.gates[s.gate_of[layer]].detach()[head]
                    logit = sum(float(w[j] * h[b, t, j]) for j in range(k))
                    logit += sum(float(w[k + j] * e[j]) for j in range(k))
                    g = 2 / (1 + math.exp(-logit))
                out[b, t, head] = v[b, t, head] + g * e[head * d : (head + 1) * d]
    return out


@st.composite
def layouts(draw, n_layers):
    """A named pattern, or explicit (possibly negative) layer indices with or without shared tables."""
    kind = draw(st.sampled_from(["speedrun", "shared", "every", "explicit"]))
    if kind != "explicit":
        return {"layers": kind}
    chosen = draw(st.lists(st.integers(0, n_layers - 1), min_size=1, max_size=n_layers, unique=True))
    layers = [i - n_layers if draw(st.booleans()) else i for i in chosen]
    if not draw(st.booleans()):
        return {"layers": layers}
    n_tables = draw(st.integers(1, len(layers)))
    tables = list(range(n_tables)) + draw(st.lists(st.integers(0, n_tables - 1), min_size=len(layers) - n_tables,
                                                   max_size=len(layers) - n_tables))
    return {"layers": layers, "tables": draw(st.permutations(tables))}


@given(data=st.data(), n_layers=st.integers(1, 6), n_kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]),
       head_dim=st.sampled_from([2, 4]), gate=st.booleans(), batch=st.integers(1, 2), seq=st.integers(1, 4))
def test_mix_matches_a_loop(data, n_layers, n_kv_heads, group, head_dim, gate, batch, seq):
    d_model = n_kv_heads * group * head_dim
    width = data.draw(st.none() | st.integers(1, min(d_model, n_kv_heads * head_dim)), label="gate_width")
    options = data.draw(layouts(n_layers), label="layout")
    s = strategy(n_layers, n_kv_heads * group, n_kv_heads, head_dim, gate=gate, gate_width=width, **options)
    assert s.gate_width == (min(6, n_kv_heads * head_dim) if width is None else width)
    g = torch.Generator().manual_seed(n_layers * 7 + seq)
    tokens = torch.randint(0, 11, (batch, seq), generator=g)
    inp, state = s.init_state(torch.randn(batch, seq, d_model, dtype=F64), tokens)
    assert state is tokens
    for layer in range(n_layers):
        v = torch.randn(batch, seq, n_kv_heads, head_dim, generator=g, dtype=F64)
        h = torch.randn(batch, seq, d_model, generator=g, dtype=F64)
        got, state = s.mix_value(layer, v, h, state)
        torch.testing.assert_close(got, loop_mix(s, layer, v, h, tokens), msg=f"layer {layer}")
        assert state is tokens


def test_gate_is_one_at_init_and_tables_start_at_init_std():
    s = strategy(n_layers=3, vocab=4000, perturb=False, layers="every")
    for table in s.tables:
        assert abs(float(table.detach().std()) - 0.01) < 0.0005 and abs(float(table.detach().mean())) < 0.0005
    assert all(torch.equal(w, torch.zeros(2, 12, dtype=F64)) for w in s.gates)
    plain = strategy(n_layers=3, vocab=4000, perturb=False, layers="every", gate=False)
    assert not hasattr(plain, "gates") and len(list(plain.parameters())) == 3
    with torch.no_grad():
        for a, b in zip(plain.tables, s.tables):
            a.copy_(b)
    tokens = torch.randint(0, 4000, (2, 5))
    v, h = torch.randn(2, 5, 2, 4, dtype=F64), torch.randn(2, 5, 16, dtype=F64)
    e = s.embedding(1, tokens)
    assert torch.equal(s.gate_values(1, h, e), torch.ones(2, 5, 2, dtype=F64))  # 2σ(0) = 1, exactly
    assert torch.equal(e, s.tables[1][tokens].view(2, 5, 2, 4))
    assert torch.equal(s.mix_value(1, v, h, tokens)[0], v + e)
    assert torch.equal(plain.mix_value(1, v, h, tokens)[0], v + e)  # both forms agree at init
    (s.mix_value(1, v, h, tokens)[0] * torch.randn_like(v)).sum().backward()
    assert s.gates[1].grad.abs().sum() > 0  # the zero gate learns
    zero = strategy(n_layers=3, perturb=False, init_std=0.0)
    assert all(not t.any() for t in zero.tables)
    assert torch.equal(zero.mix_value(2, v, h, torch.randint(0, 11, (2, 5)))[0], v)  # init_std=0: the baseline


def test_shared_tables_are_one_parameter_and_gradients_accumulate():
    s = strategy(n_layers=4, layers=[0, -1, 2], tables=[0, 0, 1])
    assert s.table_of == (0, None, 1, 0) and len(s.tables) == 2 and len(s.gates) == 3
    assert s.embedded_layers == (0, 2, 3)
    names = [n for n, _ in s.named_parameters()]
    assert names == ["tables.0", "tables.1", "gates.0", "gates.1", "gates.2"]  # one gate per layer
    tokens = torch.randint(0, 11, (2, 5))
    g = torch.Generator().manual_seed(0)
    parts = []
    for layer in (0, 3):
        v, h = torch.randn(2, 5, 2, 4, generator=g, dtype=F64), torch.randn(2, 5, 16, generator=g, dtype=F64)
        w = torch.randn(2, 5, 2, 4, generator=g, dtype=F64)
        parts.append((s.mix_value(layer, v, h, tokens)[0] * w).sum())
    alone = [torch.autograd.grad(part, s.tables[0], retain_graph=True)[0] for part in parts]
    assert all(a.abs().sum() > 0 for a in alone)
    sum(parts).backward()
    torch.testing.assert_close(s.tables[0].grad, alone[0] + alone[1])
    assert s.tables[1].grad is None  # layer 2's table took no part
    # in a model: the shared table is one tensor of the state dict, counted once
    cfg = value_embeddings("tiny", layers="shared", gate=False)
    model = CausalLM(cfg)
    assert model.strategy.table_of == (0, 1, 0, 1)
    assert sorted(k for k in model.state_dict() if k.startswith("strategy.")) == ["strategy.tables.0",
                                                                                  "strategy.tables.1"]
    assert model.num_params() - count_params(transformer("tiny")) == 2 * 256 * 64


SPEEDRUN = {
    1: (0,), 2: (0, 1), 3: (0, 1, 2), 4: (None, 0, 1, 2), 5: (None, 0, 1, 2, 3), 6: (None, 0, 1, 2, 3, 4),
    7: (None, 0, 1, None, 2, 3, 4), 11: (None, 0, 1) + (None,) * 5 + (2, 3, 4),
    12: (None, 0, 1) + (None,) * 6 + (2, 3, 4),
}
SHARED = {
    1: (0,), 2: (0, 0), 3: (0, None, 0), 4: (0, 1, 0, 1), 5: (0, 1, None, 0, 1), 6: (0, 1, 2, 0, 1, 2),
    7: (0, 1, 2, None, 0, 1, 2), 11: (0, 1, 2) + (None,) * 5 + (0, 1, 2), 12: (0, 1, 2) + (None,) * 6 + (0, 1, 2),
}


@pytest.mark.parametrize("n_layers", sorted(SPEEDRUN))
def test_default_patterns_over_depth(n_layers):
    assert table_layout(n_layers) == table_layout(n_layers, "speedrun") == SPEEDRUN[n_layers]
    assert table_layout(n_layers, "shared") == SHARED[n_layers]
    assert table_layout(n_layers, "every") == tuple(range(n_layers))


def test_model_defaults_and_parameter_count():
    """small (11 layers): the speedrun's layers 1, 2, 8, 9, 10, five vocab × d tables, five zero gates."""
    cfg = model_config("small", "value_embed")
    with torch.device("meta"):
        model = CausalLM(cfg)
    assert model.strategy.table_of == SPEEDRUN[11] and model.strategy.gate and model.strategy.gate_width == 6
    added = count_params(cfg) - count_params(transformer("small"))
    assert added == 5 * 32000 * 768 + 5 * 12 * 12
    assert set(strategy_options("value_embed")) == {"gate", "layers", "tables", "gate_width", "init_std"}
    explicit = value_embeddings("tiny", layers=(0, -1), tables=(0, 0))
    assert dict(explicit.strategy_options) == {"gate": True, "layers": [0, -1], "tables": [0, 0]}  # as JSON reads it
    assert CausalLM(explicit).strategy.table_of == (0, None, None, 0)


def test_tables_decay_like_the_token_embedding():
    model = CausalLM(value_embeddings("tiny"))
    decayed = {id(p) for group in make_optimizer(model, OptimConfig()).param_groups if group["weight_decay"] > 0
               for p in group["params"]}
    assert id(model.embed.weight) in decayed
    assert all(id(p) in decayed for p in model.strategy.parameters())


def test_state_is_the_tokens_and_every_call_checks_it():
    s = strategy(n_layers=4)
    x0, v, h = torch.randn(2, 3, 16, dtype=F64), torch.randn(2, 3, 2, 4, dtype=F64), torch.randn(2, 3, 16, dtype=F64)
    with pytest.raises(ValueError, match="init_state needs tokens"):
        s.init_state(x0)
    with pytest.raises(ValueError, match=r"tokens \(2, 4\) must match"):
        s.init_state(x0, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="needs the token ids as its state"):
        s.mix_value(0, v, h, None)
    with pytest.raises(ValueError, match="layer must be in"):
        s.mix_value(4, v, h, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="layer 0 has no value embedding"):
        s.embedding(0, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="has no gate"):
        strategy(gate=False).gate_values(1, h, v)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    out, state = s.mix_value(0, v, h, tokens)  # layer 0 has no table at depth 4: the baseline
    assert out is v and state is tokens


BAD = [
    (dict(layers="unet"), "layers must be one of"),
    (dict(layers=[]), "layers must be one of"),
    (dict(layers=[1.0]), "layers must be one of"),
    (dict(layers=[True]), "layers must be one of"),
    (dict(layers=5), "layers must be one of"),
    (dict(layers=[4]), r"layers must be in \[-4, 4\)"),
    (dict(layers=[-5]), r"layers must be in \[-4, 4\)"),
    (dict(layers=[3, -1]), "layers must name each layer once"),
    (dict(layers="shared", tables=[0, 0]), "tables must be None with a named layers pattern"),
    (dict(layers=[0, 1], tables=[0]), "tables must be None or one integer per entry"),
    (dict(layers=[0, 1], tables="ab"), "tables must be None or one integer per entry"),
    (dict(layers=[0, 1], tables=[0, 2]), "tables must number the tables"),
    (dict(layers=[0, 1], tables=[-1, 0]), "tables must number the tables"),
    (dict(gate=1), "gate must be True or False"),
    (dict(gate_width=0), "gate_width must be None or an integer in"),
    (dict(gate_width=9), r"gate_width must be .* = \[1, 8\], got 9"),
    (dict(gate_width=2.0), "gate_width must be None or an integer in"),
    (dict(init_std=-0.1), "init_std must be a finite number >= 0"),
    (dict(init_std=float("nan")), "init_std must be a finite number >= 0"),
    (dict(init_std="0.01"), "init_std must be a finite number >= 0"),
    (dict(vocab=None), "vocab_size must be an integer >= 1"),
    (dict(vocab=0), "vocab_size must be an integer >= 1"),
]


@pytest.mark.parametrize("options, match", BAD, ids=[m for _, m in BAD])
def test_bad_options_name_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        strategy(perturb=False, **options)


@given(layers=st.lists(st.integers(-20, 20), min_size=1, max_size=6), n_layers=st.integers(1, 8))
def test_bad_layer_indices_name_layers(layers, n_layers):
    index = [i % n_layers for i in layers]
    if all(-n_layers <= i < n_layers for i in layers) and len(set(index)) == len(index):
        assert table_layout(n_layers, layers) == tuple(index.index(i) if i in index else None for i in range(n_layers))
        return
    with pytest.raises(ValueError, match="^layers must"):
        table_layout(n_layers, layers)


@given(width=st.integers(-5, 40))
def test_gate_width_fits_both_inputs(width):
    """k channels of h (d_model = 16) and of e (kv_heads · head_dim = 8)."""
    if 1 <= width <= 8:
        assert strategy(perturb=False, gate_width=width).gates[0].shape == (2, 2 * width)
    else:
        with pytest.raises(ValueError, match="^gate_width must"):
            strategy(perturb=False, gate_width=width)


def test_config_and_dims_errors():
    with pytest.raises(ValueError, match="strategy_options: layers must be in"):
        ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, strategy="value_embed",
                    strategy_options={"layers": [2]})
    with pytest.raises(ValueError, match=r"ModelDims\(vocab_size=...\)"):
        build_strategy("value_embed", ModelDims(16, 2, 2, 2))
    assert build_strategy("value_embed", ModelDims(16, 2, 2, 1, vocab_size=5)).tables[0].shape == (5, 8)  # GQA
