"""DenseFormer, MUDDFormer and Hyper-Connections vs straightforward loops over the papers' formulas.

Hook-level tests drive each strategy through the same hook sequence as CausalLM with cheap
per-token "blocks", against reference implementations that keep a Python list of states
and spell the equations out; model-level tests check identity init, causality, decode ==
full forward (torch.compile == eager: test_every_strategy).
"""

import math
import weakref
from contextlib import nullcontext
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from recipes.lm.builders import denseformer, hyperconnections, muddformer
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM, KVCache
from value_routing import STRATEGIES, DenseAggregation, DynamicDenseAggregation, HyperConnections
from value_routing.strategies.base import BlockInput
from value_routing.strategies.depth_states import aggregate_depth_states, append_depth_state, init_depth_states

F64 = torch.float64


# ----------------------------------------------------------------------------- hook-level


class ToyBlocks:
    """Per-token stand-ins for Transformer blocks of two sublayers: ``a = x + attn(q, k, v)`` with
    ``attn = tanh(q Wq) ⊙ (k Wk) + sin(v Wv)``, then ``y = a + cos(a Wm)``."""

    def __init__(self, n_layers, dim):
        self.weights = [torch.randn(4, dim, dim, dtype=F64, requires_grad=True) for _ in range(n_layers)]

    def attn(self, layer, inp):
        wq, wk, wv, _ = self.weights[layer] / math.sqrt(inp.x.shape[-1])
        q, k, v = (inp.x if t is None else t for t in (inp.q, inp.k, inp.v))
        return torch.tanh(q @ wq) * (k @ wk) + torch.sin(v @ wv)

    def mlp(self, layer, a):
        return torch.cos(a @ (self.weights[layer][3] / math.sqrt(a.shape[-1])))

    def __call__(self, layer, inp):
        a = inp.x + self.attn(layer, inp)
        return a + self.mlp(layer, a)


def run_hooks(strategy, x0, blocks, keep=None):
    """The CausalLM loop over the strategy hooks (``keep`` collects weakrefs to block outputs)."""
    inp, state = strategy.init_state(x0)
    for layer in range(strategy.n_layers):
        a, state = strategy.residual(layer, 0, inp.x, blocks.attn(layer, inp), state)
        y, state = strategy.residual(layer, 1, a, blocks.mlp(layer, a), state)
        if keep is not None:
            keep.append(weakref.ref(y))
        inp, state = strategy.block_output(layer, y, state)
        del y
    return inp.x


def dense_reference(s, x0, blocks):
    """DenseFormer: Y_i = Σ_{j≤i, j≡i (mod k)} α_ij X_j after every p-th block, else Y_i = X_i."""
    xs, y = [x0], x0
    for i in range(1, s.n_layers + 1):
        xs.append(blocks(i - 1, BlockInput(y)))
        if i % s.period == 0:
            js = [j for j in range(i + 1) if (i - j) % s.dilation == 0]
            y = sum(a * xs[j] for a, j in zip(s.alpha(i), js, strict=True))
        else:
            y = xs[i]
    return y


def rms(x, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def mudd_reference(s, x0, blocks):
    """MUDDFormer: A_i = GELU(RMSNorm(X_i) W1) W2 + a_i; streams Q, K, V, R = Σ_j A_ij X_j."""
    xs, inp = [x0], BlockInput(x0)
    for layer in range(s.n_layers):
        xs.append(blocks(layer, inp))
        c, n = (4 if layer < s.n_layers - 1 else 1), layer + 2
        a = gelu(rms(xs[-1], s.norm_eps) @ s.w1[layer].weight.t()) @ s.w2[layer].weight.t() + s.static[layer]
        a = a.reshape(*a.shape[:-1], c, n)
        streams = [sum(a[..., ci, j, None] * xs[j] for j in range(n)) for ci in range(c)]
        inp = BlockInput(streams[3], streams[0], streams[1], streams[2]) if c == 4 else None
    return streams[0]


def hyper_reference(s, x0, blocks):
    """Hyper-Connections: h = A_mᵀH, H' = Bᵀ(block(h) − h) + A_rᵀH, rows of A, B from their own H row."""
    n, hyper = s.rate, [x0] * s.rate
    for layer in range(s.n_layers):
        alphas, betas = [], []
        for i in range(n):
            alpha = s.static_alpha[layer].view(n, n + 1)[i]
            beta = s.static_beta[layer][i]
            if s.dynamic:
                dyn = torch.tanh(rms(hyper[i], s.norm_eps) @ s.proj[layer].t())
                alpha = s.scales[layer][0] * dyn[..., : n + 1] + alpha
                beta = s.scales[layer][1] * dyn[..., n + 1 :] + beta
            alphas.append(alpha)
            betas.append(beta)
        h = sum(alphas[i][..., 0:1] * hyper[i] for i in range(n))
        out = blocks(layer, BlockInput(h)) - h
        hyper = [betas[j] * out + sum(alphas[i][..., j + 1 : j + 2] * hyper[i] for i in range(n)) for j in range(n)]
    return sum(hyper)


def perturb(strategy, scale=0.3):
    with torch.no_grad():
        for p in strategy.parameters():
            p.add_(scale * torch.randn_like(p))
    return strategy


def assert_parity(strategy, reference, x0, blocks):
    """Forward and gradients (input, blocks, strategy parameters) of hooks == reference."""
    params = [x0, *blocks.weights, *strategy.parameters()]
    probe = torch.randn(x0.shape, dtype=F64)
    out = run_hooks(strategy, x0, blocks)
    ref = reference(strategy, x0, blocks)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad((out * probe).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * probe).sum(), params, allow_unused=True)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


shapes = st.tuples(st.integers(1, 2), st.integers(1, 4), st.sampled_from([4, 8]))


#: The three forms of DepthStates: impl="buffer" in eager, impl="stack", and impl="buffer" as it
#: runs inside torch.compile (the unrolled weighted sum; selected by torch.compiler.is_compiling).
FORMS = {"buffer": ("buffer", False), "stack": ("stack", False), "sum": ("buffer", True)}


def as_if_compiling(compiling):
    return mock.patch.object(torch.compiler, "is_compiling", lambda: True) if compiling else nullcontext()


@given(data=st.data(), shape=shapes, n_layers=st.integers(1, 5), form=st.sampled_from(list(FORMS)))
def test_dense_matches_reference(data, shape, n_layers, form):
    dilation = data.draw(st.integers(1, n_layers), label="dilation")
    period = data.draw(st.integers(1, n_layers), label="period")
    torch.manual_seed(n_layers)
    impl, compiling = FORMS[form]
    s = perturb(DenseAggregation(n_layers, dilation=dilation, period=period, impl=impl).to(F64))
    x0 = torch.randn(shape, dtype=F64, requires_grad=True)
    with as_if_compiling(compiling):
        assert s.init_state(x0)[1].form == form
        assert_parity(s, dense_reference, x0, ToyBlocks(n_layers, shape[-1]))


@given(shape=shapes, n_layers=st.integers(1, 4), form=st.sampled_from(list(FORMS)))
def test_mudd_matches_reference(shape, n_layers, form):
    torch.manual_seed(n_layers)
    impl, compiling = FORMS[form]
    s = perturb(DynamicDenseAggregation(shape[-1], n_layers, impl=impl).to(F64))
    x0 = torch.randn(shape, dtype=F64, requires_grad=True)
    with as_if_compiling(compiling):
        assert s.init_state(x0)[1].form == form
        assert_parity(s, mudd_reference, x0, ToyBlocks(n_layers, shape[-1]))


@given(shape=shapes, n_layers=st.integers(1, 4), rate=st.integers(1, 4), dynamic=st.booleans())
def test_hyper_matches_reference(shape, n_layers, rate, dynamic):
    torch.manual_seed(rate)
    s = perturb(HyperConnections(shape[-1], n_layers, rate=rate, dynamic=dynamic).to(F64))
    x0 = torch.randn(shape, dtype=F64, requires_grad=True)
    assert_parity(s, hyper_reference, x0, ToyBlocks(n_layers, shape[-1]))


def test_dilation_and_period_follow_the_paper():
    s = DenseAggregation(6, dilation=2, period=3)
    assert s.dwa_depths() == [3, 6]
    assert list(s.sources(3)) == [1, 3] and list(s.sources(6)) == [0, 2, 4, 6]
    assert s.alpha(4) is None and s.alpha(3).tolist() == [0.0, 1.0]  # identity init: α_ii = 1


def test_depth_states_gradcheck_strided_dynamic():
    """The write-once buffer's autograd functions pass gradcheck, including strided slot views."""
    xs = [torch.randn(2, 3, 4, dtype=F64, requires_grad=True) for _ in range(4)]
    w = torch.randn(2, 3, 2, 2, dtype=F64, requires_grad=True)
    w_static = torch.randn(1, 1, 1, 4, dtype=F64, requires_grad=True)

    def fn(w, w_static, *xs):
        states = init_depth_states(xs[0], 4)
        for x in xs[1:]:
            states = append_depth_state(states, x)
        return aggregate_depth_states(states, w, start=1, step=2) + aggregate_depth_states(states, w_static)

    assert torch.autograd.gradcheck(fn, (w, w_static, *xs))


class FunctionLog(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "make, frees", [(lambda: DenseAggregation(4), True), (lambda: DynamicDenseAggregation(8, 4), False)]
)
def test_buffer_never_stacks_and_frees_block_outputs(make, frees):
    """impl="buffer": no torch.stack/cat, and (DenseFormer) no block output outlives its write
    into the buffer. MUDDFormer's weight MLP normalises X_i, and the norm keeps X_i for backward."""
    x0 = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    blocks = ToyBlocks(4, 8)
    for impl, stacks in (("buffer", False), ("stack", True)):
        s = make().to(F64)
        s.impl = impl
        keep, log = [], FunctionLog()
        with log:
            out = run_hooks(s, x0, blocks, keep)
        assert (("stack" in log.names) or ("cat" in log.names)) == stacks
        if impl == "buffer":
            assert all(ref() is None for ref in keep) == frees
        out.sum().backward()


@pytest.mark.parametrize("make", [lambda: DenseAggregation(4, dilation=2), lambda: DynamicDenseAggregation(8, 4)])
def test_compiled_buffer_impl_neither_stacks_nor_writes_slots(make, fresh_dynamo):
    """Inside torch.compile, impl="buffer" captures the unrolled weighted sum: the graph holds no
    stack/cat and no buffer allocation or slot write (which functionalization would turn into copies)."""
    s, blocks = make().to(F64), ToyBlocks(4, 8)
    x0 = torch.randn(2, 3, 8, dtype=F64)
    targets = []

    def record(gm, example_inputs):
        targets.extend(str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes)
        return gm.forward

    out = torch.compile(lambda x: run_hooks(s, x, blocks), backend=record, fullgraph=True)(x0)
    torch.testing.assert_close(out, run_hooks(s, x0, blocks))
    assert targets and not {"stack", "cat", "new_empty", "setitem", "_WriteSlot", "apply"} & set(targets), targets


# ----------------------------------------------------------------------------- model-level


def tiny(strategy="baseline", options=None, **overrides):
    kw = dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32)
    return ModelConfig(**{**kw, **overrides}, strategy=strategy, strategy_options=options or {})


def tokens(batch, seq, seed=0):
    return torch.randint(0, 61, (batch, seq), generator=torch.Generator().manual_seed(seed))


def model_for(cfg, dtype=F64, scale=0.3):
    torch.manual_seed(0)
    model = CausalLM(cfg).to(dtype)
    perturb(model.strategy, scale)
    return model.eval()


CASES = [
    ("dense", {}),
    ("dense", {"dilation": 2, "period": 2, "impl": "stack"}),
    ("mudd", {}),
    ("hyper", {"rate": 3}),
    ("hyper", {"rate": 2, "dynamic": False}),
    ("mudd", {"form": "authors"}),
    ("hyper", {"form": "authors", "rate": 3}),
    ("hyper", {"form": "authors", "rate": 2, "dynamic": False}),
]


@pytest.mark.parametrize(
    "strategy, options",
    [("dense", {}), ("dense", {"dilation": 2, "period": 3}), ("mudd", {}),
     ("hyper", {"norm_eps": 0.0}), ("hyper", {"dynamic": False, "rate": 2}),
     ("mudd", {"form": "authors"}), ("hyper", {"form": "authors"})],
)
def test_identity_init_equals_baseline(strategy, options):
    """At init DenseFormer and MUDDFormer *are* the baseline; Hyper-Connections sum n equal
    streams (n × the baseline's residual), equal after the final RMSNorm when its eps is 0."""
    base = model_for(tiny(norm_eps=0.0), scale=0.0)
    model = model_for(tiny(strategy, options, norm_eps=0.0), scale=0.0)
    model.load_state_dict(base.state_dict(), strict=False)
    x = tokens(2, 10)
    torch.testing.assert_close(model(x).logits, base(x).logits)
    perturb(model.strategy)
    assert not torch.allclose(model(x).logits, base(x).logits)


@pytest.mark.parametrize("strategy, options", CASES)
def test_causal_and_decode_equals_full_forward(strategy, options):
    cfg = tiny(strategy, options)
    model = model_for(cfg)
    x = tokens(2, 12)
    full = model(x).logits
    y = x.clone()
    y[:, 6:] = tokens(2, 6, seed=1)
    torch.testing.assert_close(model(y).logits[:, :6], full[:, :6])
    cache = KVCache.allocate(cfg, 2, 12, dtype=F64)
    logits, cache = model(x[:, :5], cache=cache)
    steps = [logits]
    for t in range(5, 12):
        logits, cache = model(x[:, t : t + 1], cache=cache)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_builders_and_registry():
    assert {"dense", "mudd", "hyper"} <= set(STRATEGIES)
    assert denseformer("tiny", dilation=2, period=2).strategy_options["dilation"] == 2
    assert muddformer("medium", impl="stack").strategy == "mudd"
    assert hyperconnections("large", rate=2, dynamic=False).strategy_options == {
        "form": "authors", "rate": 2, "dynamic": False}


@pytest.mark.parametrize(
    "strategy, options, match",
    [
        ("dense", {"dilation": 0}, "dilation must be in"),
        ("dense", {"period": 4}, r"period must be in \[1, n_layers\]"),
        ("dense", {"impl": "list"}, r"impl must be one of \('buffer', 'stack'\)"),
        ("mudd", {"impl": "loop"}, "impl must be one of"),
        ("mudd", {"init_std": -1.0}, "init_std"),
        ("hyper", {"rate": 0}, "rate must be >= 1"),
        ("hyper", {"dynamic": "yes"}, "dynamic must be True or False"),
        ("hyper", {"norm_eps": -1e-6}, "norm_eps must be None or a finite number >= 0"),
        ("hyper", {"expansion": 4}, "strategy_options"),
    ],
)
def test_invalid_options_name_the_field(strategy, options, match):
    with pytest.raises(ValueError, match=match):
        tiny(strategy, options)


def test_hook_layer_out_of_range():
    x = torch.randn(1, 2, 8)
    for s in (DenseAggregation(2), DynamicDenseAggregation(8, 2)):
        with pytest.raises(ValueError, match="layer must be in"):
            s.block_output(2, x, s.init_state(x)[1])
    hc = HyperConnections(8, 2)
    with pytest.raises(ValueError, match="layer must be in"):
        hc.residual(2, 0, x, x, hc.init_state(x)[1])
    with pytest.raises(ValueError, match="layer must be in"):
        DynamicDenseAggregation(8, 2).weights(5, x)


@pytest.mark.parametrize("rate", [1, 3, 4])
def test_hyper_connections_init_is_the_papers(rate):
    """Layer k starts as a Pre-Norm residual: A_m = e_(k mod n), A_r = I, B = 1, dynamic parts 0,
    scales 0.01. (All streams are equal at init, so the function alone cannot tell e_0 from
    e_(k mod n); the parameters that then train can.)"""
    s = HyperConnections(d_model=8, n_layers=6, rate=rate)
    for k in range(6):
        alpha = s.static_alpha[k].view(rate, rate + 1)
        expected_m = torch.zeros(rate)
        expected_m[k % rate] = 1.0
        assert torch.equal(alpha[:, 0], expected_m) and torch.equal(alpha[:, 1:], torch.eye(rate))
        assert torch.equal(s.static_beta[k], torch.ones(rate))
        assert torch.equal(s.proj[k], torch.zeros(rate + 2, 8)) and torch.equal(s.scales[k], torch.full((2,), 0.01))
