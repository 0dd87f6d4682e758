"""Attention Residuals (Full and Block) against a plain loop over the paper's equation.

Hook-level tests drive the strategy through CausalLM's hook sequence with cheap per-token
sublayers (``o = tanh(norm(h) W)``) and compare every sublayer input, the final norm's input and
all gradients with a loop that keeps a Python list of outputs and spells out the sources, the
key RMSNorm and the softmax; the custom backward is gradchecked in float64. Model-level: at its
zero init the model is the baseline up to the norms' epsilon. The reference LM
(tests/reference_model.py) checks the whole model; the depth bench test checks the memory.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.lm.builders import attnres
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from value_routing import STRATEGIES, AttentionResiduals
from value_routing.strategies.attention_residuals import AttnResState, attention_residual
from value_routing.strategies.depth_states import DepthStates, append_depth_state, init_depth_states

F64 = torch.float64
FORMS = ("buffer", "stack", "sum")  # "sum": the tuple form init_state picks inside torch.compile


def plain_mix(sources, w, g, eps):
    """``Σ_i softmax_i(w · g ⊙ v_i / rms(v_i)) v_i``, one source at a time."""
    logits = []
    for v in sources:
        key = g * v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps)
        logits.append((key * w).sum(-1))
    alpha = torch.softmax(torch.stack(logits, -1), -1)
    return sum(alpha[..., i, None] * v for i, v in enumerate(sources))


def plain_attnres(x0, sublayer, n_layers, size, queries, scales, eps):
    """Every mix ``h_1..h_2L`` of the loop: sources = embedding + outputs summed in groups of ``size``."""
    outputs, mixes, h = [], [], x0
    for m in range(1, 2 * n_layers + 1):
        outputs.append(sublayer(m - 1, h))
        sources = [x0] + [sum(outputs[j:j + size]) for j in range(0, m, size)]
        h = plain_mix(sources, queries[m - 1], scales[m - 1], eps)
        mixes.append(h)
    return mixes


def hook_attnres(strategy, x0, sublayer, form):
    """The same mixes through init_state / residual / block_output, as CausalLM calls them."""
    inp, state = strategy.init_state(x0)
    if form == "sum":
        state = AttnResState(DepthStates(None, (x0,), "sum"))  # as init_depth_states makes it when compiling
    mixes = []
    for layer in range(strategy.n_layers):
        a, state = strategy.residual(layer, 0, inp.x, sublayer(2 * layer, inp.x), state)
        y, state = strategy.residual(layer, 1, a, sublayer(2 * layer + 1, a), state)
        inp, state = strategy.block_output(layer, y, state)
        mixes += [a, inp.x]
    return mixes


def toy_sublayers(n, dim, dtype=F64):
    weights = torch.randn(n, dim, dim, dtype=dtype) / dim**0.5
    weights.requires_grad_(True)

    def sublayer(s, h):
        return torch.tanh((h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()) @ weights[s])

    return sublayer, weights


def perturbed(n_layers, dim, scale=0.5, **options):
    s = AttentionResiduals(dim, n_layers, **options).double()
    with torch.no_grad():
        for p in s.parameters():
            p.add_(scale * torch.randn_like(p))
    return s


@given(
    n_layers=st.integers(1, 4), size=st.sampled_from([1, 2, 4, 6]), dim=st.integers(1, 6),
    batch=st.integers(1, 2), seq=st.integers(1, 3), form=st.sampled_from(FORMS), eps=st.sampled_from([1e-6, 0.1]),
)
def test_every_mix_and_gradient_equals_the_plain_loop(n_layers, size, dim, batch, seq, form, eps):
    s = perturbed(n_layers, dim, block_size=size, impl="stack" if form == "stack" else "buffer", norm_eps=eps)
    sublayer, weights = toy_sublayers(2 * n_layers, dim)
    x0 = torch.randn(batch, seq, dim, dtype=F64, requires_grad=True)
    got = hook_attnres(s, x0, sublayer, form)
    want = plain_attnres(x0, sublayer, n_layers, size, list(s.queries), list(s.key_scales), eps)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    probe = torch.randn(len(got), batch, seq, dim, dtype=F64)
    leaves = [x0, weights, *s.parameters()]
    g_got = torch.autograd.grad(sum((h * p).sum() for h, p in zip(got, probe)), leaves)
    g_want = torch.autograd.grad(sum((h * p).sum() for h, p in zip(want, probe)), leaves)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_partial", [False, True])
@pytest.mark.parametrize("n_sources", [1, 3])
def test_custom_backward_passes_gradcheck(with_partial, n_sources):
    """The buffer form's autograd function: gradients to every slot handle, the partial sum and ``u``."""
    xs = [torch.randn(2, 3, 4, dtype=F64, requires_grad=True) for _ in range(n_sources)]
    partial = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    u = torch.randn(4, dtype=F64, requires_grad=True)

    def mix(*args):
        *sources, p, w = args
        states = init_depth_states(sources[0], len(sources))
        for x in sources[1:]:
            states = append_depth_state(states, x)
        assert states.form == "buffer"
        return attention_residual(states, p if with_partial else None, w, 1e-3)

    assert torch.autograd.gradcheck(mix, (*xs, partial, u))
    zero = torch.zeros(2, 3, 4, dtype=F64, requires_grad=True)  # a source of zeros: finite gradients
    assert torch.autograd.gradcheck(mix, (zero, *xs[1:], partial, u))


def test_buffer_form_keeps_only_the_buffer_for_backward():
    """Backward of a mix holds ``u`` and the partial sum, never a per-source tensor: the sources
    live once, in the buffer (Full: one slot per source)."""
    s = perturbed(3, 8)
    sublayer, _ = toy_sublayers(6, 8)
    x0 = torch.randn(2, 5, 8, dtype=F64, requires_grad=True)
    inp, state = s.init_state(x0)
    h = inp.x
    for layer in range(3):
        a, state = s.residual(layer, 0, h, sublayer(2 * layer, h), state)
        h, state = s.residual(layer, 1, a, sublayer(2 * layer + 1, a), state)
    assert state.blocks.buffer.shape == (7, 2, 5, 8) and len(state.blocks.handles) == 7 and state.partial is None
    node = h.grad_fn
    while type(node).__name__ != "_SoftmaxSlotsBackward":
        node = node.next_functions[0][0]
    assert [tuple(t.shape) for t in node.saved_tensors if t is not None] == [(8,)]


@pytest.mark.parametrize("size, slots", [(1, 9), (2, 5), (4, 3), (6, 2), (8, 2), (10, 1)])
def test_block_sources_and_slots(size, slots):
    """L = 4 (8 sublayers): the buffer holds the embedding and every completed block."""
    s = AttentionResiduals(4, 4, block_size=size)
    assert s.n_slots == slots
    sources = s.sources(8)  # the final norm's input
    assert sources[0] == range(0) and [j for r in sources[1:] for j in r] == list(range(8))
    assert all(len(r) == size for r in sources[1:-1]) and 1 <= len(sources[-1]) <= size
    assert s.sources(1) == [range(0), range(0, 1)]


def test_mixing_runs_in_float32_for_bfloat16_inputs():
    s = perturbed(2, 8, block_size=2).float()
    sublayer, _ = toy_sublayers(4, 8, torch.float32)
    x0 = torch.randn(2, 3, 8)
    inp, state = s.init_state(x0.bfloat16())
    assert state.blocks.buffer.dtype == torch.float32
    outs = [sublayer(0, x0).bfloat16()]
    a, state = s.residual(0, 0, inp.x, outs[0], state)
    assert a.dtype == torch.bfloat16 and state.partial.dtype == torch.float32
    want = plain_mix([x0.bfloat16().float(), outs[0].float()], s.queries[0], s.key_scales[0], 1e-6)
    torch.testing.assert_close(a, want.bfloat16(), rtol=0, atol=0)


def tiny(strategy="baseline", options=None, **kw):
    base = dict(vocab_size=61, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1, d_ff=24, max_seq_len=16)
    return ModelConfig(**{**base, **kw}, strategy=strategy, strategy_options=options or {})


@pytest.mark.parametrize("size", [1, 2, 4])
def test_zero_init_is_the_baseline_up_to_the_norms_epsilon(size):
    """w = 0: every mix is the mean of its sources, the baseline's stream over their number; the
    pre-norms and the final norm (eps 0) do not see the scale."""
    torch.manual_seed(0)
    base = CausalLM(tiny(norm_eps=0.0)).double()
    model = CausalLM(tiny("attnres", {"block_size": size}, norm_eps=0.0)).double()
    assert all((q == 0).all() for q in model.strategy.queries) and all((g == 1).all() for g in model.strategy.key_scales)
    model.load_state_dict(base.state_dict(), strict=False)
    x = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x).logits, base(x).logits, rtol=1e-9, atol=1e-11)
    with torch.no_grad():
        model.strategy.queries[3].add_(torch.randn(16, dtype=F64))
    assert not torch.allclose(model(x).logits, base(x).logits)


def test_registry_builder_and_options():
    assert STRATEGIES["attnres"] is AttentionResiduals
    assert attnres("tiny", block_size=4).strategy_options == {"block_size": 4, "impl": "buffer"}
    model = CausalLM(tiny("attnres"))
    assert len(model.strategy.queries) == len(model.strategy.key_scales) == 6
    assert all(p.ndim == 1 for p in model.strategy.parameters())  # no weight decay under "matrices only"


@given(bad=st.one_of(st.integers(-4, 0), st.integers(1, 20).map(lambda k: 2 * k + 1), st.booleans(),
                     st.floats(1.5, 3.5), st.just("2")))
def test_bad_block_size_names_the_option(bad):
    with pytest.raises(ValueError, match=r"block_size must be 1 \(Full AttnRes\) or an even number"):
        AttentionResiduals(8, 4, block_size=bad)


@pytest.mark.parametrize(
    "options, match",
    [({"impl": "list"}, r"impl must be one of \('buffer', 'stack'\)"), ({"norm_eps": -1e-6}, "norm_eps must be a finite number >= 0"),
     ({"norm_eps": float("nan")}, "norm_eps must be a finite number >= 0"), ({"d_model": 0}, "d_model must be >= 1")],
)
def test_bad_options_name_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        AttentionResiduals(**{"d_model": 8, "n_layers": 2, **options})


def test_hook_misuse_is_a_value_error():
    s = AttentionResiduals(4, 2)
    inp, state = s.init_state(torch.randn(1, 2, 4))
    x = inp.x
    with pytest.raises(ValueError, match=r"sublayer must be 0 \(attention\) or 1 \(MLP\), got 2"):
        s.residual(0, 2, x, x, state)
    with pytest.raises(ValueError, match="need the state of init_state"):
        s.residual(0, 0, x, x, None)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\), got 2"):
        s.residual(2, 0, x, x, state)
    with pytest.raises(ValueError, match=r"mix index must be in \[1, 4\], got 0"):
        s.sources(0)
