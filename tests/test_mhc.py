"""mHC (manifold-constrained hyper-connections) against its equations and against DeepSeek-V4.

* The mappings of every connection, per token, against a plain computation from the paper's
  equations (flatten, RMS, projection, σ / 2σ, exp then alternating column/row normalisation), and
  on their manifolds: :math:`\\mathcal{H}^{res}` non-negative with rows summing to 1 and columns
  within the Sinkhorn bound below, pre and post non-negative (hypothesis shapes and options).
* The whole routing through the hooks, both forms, against a plain loop over depth.
* Gradients through the Sinkhorn iterations: gradcheck in float64, non-zero and finite.
* Independent reference: transformers' ``DeepseekV4HyperConnection`` (a tiny config, no
  download) with its weights copied into ours and ours into it: the read weights (its collapsed
  input), the write weights, the residual matrix and the updated streams of a sublayer step.
* Init: the model is the baseline up to the final norm's ε; why the read weights start unequal
  (equal ones keep the streams' gradients equal for ever).
* Bad options raise ValueErrors naming the option.

Sinkhorn bound: with :math:`\\tau = \\tanh(\\Delta/4)`, :math:`\\Delta = \\max(L_{ij} + L_{kl} -
L_{il} - L_{kj})` the logits' projective diameter (Birkhoff's contraction ratio of one
normalisation), after :math:`t` iterations every column sum is within :math:`(n-1)\\,\\tau^{2t-1}`
of 1 (at :math:`\\tau = 1` the trivial bound). A bound we measured, not one we proved: over 1.2e5
random logit matrices (n = 2..6, std 0.1..5, t = 1..30) the worst column error came to 0.9998 of
it for n = 2 (as τ → 1) and to at most 0.81 of it for n ≥ 3.
"""

import contextlib
import math
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.lm.builders import mhc
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from value_routing import STRATEGIES, HyperConnections, ManifoldHyperConnections
from value_routing.strategies.manifold_hyper_connections import sinkhorn_knopp

F64 = torch.float64
FORMS = ("authors", "ours")


def plain_mappings(H, proj, bias, scales, iters, norm_eps, hc_eps=0.0):
    """Eqs. (7)–(9): ``H`` (n, batch, seq, d) → pre, post (batch, seq, n), res (batch, seq, n, n)
    with rows = output streams, and the residual logits."""
    n = H.shape[0]
    flat = torch.cat([H[j] for j in range(n)], dim=-1)  # vec(x_l), stream-major
    r = torch.sqrt((flat * flat).mean(-1, keepdim=True) + norm_eps)
    raw = flat @ proj.T / r
    pre = 1 / (1 + torch.exp(-(scales[0] * raw[..., :n] + bias[:n]))) + hc_eps
    post = 2 / (1 + torch.exp(-(scales[1] * raw[..., n : 2 * n] + bias[n : 2 * n])))
    logits = (scales[2] * raw[..., 2 * n :] + bias[2 * n :]).reshape(*raw.shape[:-1], n, n)
    M = torch.exp(logits)
    for t in range(iters):
        M = M / (M.sum(-2, keepdim=True) + (hc_eps if t else 0.0))  # T_c
        if t == 0:
            M = M + hc_eps
        M = M / (M.sum(-1, keepdim=True) + hc_eps)  # T_r
    return pre, post, M, logits


def projective_diameter(L):
    """``max_{i,j,k,l} L_ij + L_kl − L_il − L_kj`` per matrix."""
    cross = L[..., :, None, :, None] + L[..., None, :, None, :] - L[..., :, None, None, :] - L[..., None, :, :, None]
    return cross.flatten(-4).amax(-1)


def column_tolerance(logits, iters):
    n = logits.shape[-1]
    tau = torch.tanh(projective_diameter(logits) / 4)
    return (n - 1) * tau ** (2 * iters - 1) + 1e-12


def perturbed(s, scale=0.5, seed=0):
    """``s`` in float64 with every parameter moved away from its init (biases and scales of order 1)."""
    g = torch.Generator().manual_seed(seed)
    s = s.to(F64)
    with torch.no_grad():
        for name, p in s.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64)
            p.add_(scale * noise * (0.1 if name.startswith("proj") else 1.0))
    return s


def streams(n, shape, seed=1):
    return torch.randn(n, *shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


shapes = st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 6))


@given(shape=shapes, rate=st.integers(1, 5), iters=st.integers(1, 25), n_layers=st.integers(1, 3),
       form=st.sampled_from(FORMS), hc_eps=st.sampled_from([0.0, 1e-3]), norm_eps=st.sampled_from([None, 1e-3]))
def test_mappings_follow_the_equations_and_lie_on_their_manifolds(shape, rate, iters, n_layers, form, hc_eps, norm_eps):
    s = perturbed(ManifoldHyperConnections(shape[-1], n_layers, rate=rate, sinkhorn_iters=iters, hc_eps=hc_eps,
                                           norm_eps=norm_eps, form=form), seed=rate + iters)
    H = streams(rate, shape, seed=iters)
    eps = torch.finfo(F64).eps if norm_eps is None else norm_eps
    for m in range(s.n_connections):
        pre, post, res = s.mappings(m, H)
        want_pre, want_post, want_res, logits = plain_mappings(H, s.proj[m], s.bias[m], s.scales[m], iters, eps, hc_eps)
        torch.testing.assert_close(pre, want_pre, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(post, want_post, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(res, want_res, rtol=1e-10, atol=1e-12)
        assert (pre >= 0).all() and (pre <= 1 + hc_eps).all() and (post >= 0).all() and (post <= 2).all()
        assert (res >= 0).all()
        if hc_eps == 0.0:  # DeepSeek-V4's floor shifts both sums by O(hc_eps)
            assert (res.sum(-1) - 1).abs().max() < 1e-12  # rows: each output a convex combination
            assert ((res.sum(-2) - 1).abs().amax(-1) <= column_tolerance(logits, iters)).all()
        # the connection in HyperConnections' layout: row 0 reads, rows 1..n mix, beta writes
        alpha, beta = s.connection(m, H)
        assert torch.equal(alpha[..., 0, :], pre) and torch.equal(alpha[..., 1:, :], res)
        assert torch.equal(beta[..., 0], post.permute(2, 0, 1))


def test_sinkhorn_converges_to_doubly_stochastic_and_keeps_its_fixed_points():
    logits = 2 * torch.randn(500, 4, 4, dtype=F64)
    errors = [(sinkhorn_knopp(logits, t).sum(-2) - 1).abs().amax(-1) for t in (1, 5, 20, 400)]
    for coarse, fine in zip(errors, errors[1:]):
        assert (fine <= coarse + 1e-15).all()  # the column error never grows
    assert errors[-1].max() < 1e-9 and errors[0].max() > 0.1  # 1 iteration is far, 400 converge
    # a doubly stochastic exp(logits) is its own projection, after one iteration
    perms = torch.stack([torch.eye(4, dtype=F64)[torch.randperm(4)] for _ in range(3)])
    w = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    ds = (w[:, None, None] * perms).sum(0) * 0.9 + 0.1 / 4  # interior of the Birkhoff polytope
    torch.testing.assert_close(sinkhorn_knopp(ds.log(), 1), ds, rtol=1e-12, atol=1e-14)
    # adding a constant per input stream (column) changes nothing: the first T_c removes it
    shift = torch.randn(500, 1, 4, dtype=F64)
    torch.testing.assert_close(sinkhorn_knopp(logits + shift, 3), sinkhorn_knopp(logits, 3), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("iters, eps", [(1, 0.0), (3, 0.0), (4, 1e-2)])
def test_sinkhorn_gradcheck(iters, eps):
    logits = torch.randn(2, 3, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn_knopp(x, iters, eps), (logits,))


def test_mappings_gradcheck():
    """The whole projection — norm, projection, σ, 2σ, Sinkhorn — in float64, with respect to the
    streams and to every parameter of the connection (gradcheck perturbs the parameters in place)."""
    s = perturbed(ManifoldHyperConnections(3, 1, rate=2, sinkhorn_iters=3, hc_eps=1e-3))
    H = streams(2, (1, 2, 3)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda H, *params: s.mappings(0, H), (H, s.proj[0], s.bias[0], s.scales[0]))


# ----------------------------------------------------------------------------- the routing over depth


def toy_sublayers(n_layers, dim, seed=2):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(dim, dim, dtype=F64, generator=g) / dim**0.5 for _ in range(2 * n_layers)]

    def sublayer(s, h):  # a pre-norm sublayer: tanh(norm(h) W_s)
        return torch.tanh(h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6) @ ws[s])

    return sublayer


def plain_mhc(s, x0, sublayer):
    """Every sublayer input and the final output, from the equations, for either form."""
    n, eps = s.rate, torch.finfo(F64).eps
    H, inputs = torch.stack([x0] * n), []

    def connect(m):
        pre, post, res, _ = plain_mappings(H, s.proj[m], s.bias[m], s.scales[m], s.sinkhorn_iters, eps, s.hc_eps)
        h = sum(pre[..., j, None] * H[j] for j in range(n))
        return h, post, res

    def write(post, res, t):
        return torch.stack([post[..., i, None] * t + sum(res[..., i, j, None] * H[j] for j in range(n))
                            for i in range(n)])

    for layer in range(s.n_layers):
        if s.form == "authors":
            for sub in (0, 1):
                h, post, res = connect(2 * layer + sub)
                inputs.append(h)
                H = write(post, res, sublayer(2 * layer + sub, h))
        else:
            h, post, res = connect(layer)
            a = h + sublayer(2 * layer, h)
            y = a + sublayer(2 * layer + 1, a)
            inputs += [h, a]
            H = write(post, res, y - h)
    return inputs, H.sum(0)


def hook_mhc(s, x0, sublayer):
    inp, state = s.init_state(x0)
    inputs = []
    for layer in range(s.n_layers):
        x = inp.x
        a, state = s.residual(layer, 0, x, sublayer(2 * layer, x), state)
        y, state = s.residual(layer, 1, a, sublayer(2 * layer + 1, a), state)
        inputs += [x, a]
        inp, state = s.block_output(layer, y, state)
    return inputs, inp.x


@given(shape=shapes, rate=st.integers(1, 4), n_layers=st.integers(1, 3), form=st.sampled_from(FORMS),
       iters=st.sampled_from([1, 2, 20]), hc_eps=st.sampled_from([0.0, 1e-3]))
def test_hooks_route_like_the_equations(shape, rate, n_layers, form, iters, hc_eps):
    s = perturbed(ManifoldHyperConnections(shape[-1], n_layers, rate=rate, sinkhorn_iters=iters, hc_eps=hc_eps,
                                           form=form), seed=rate)
    x0 = torch.randn(shape, dtype=F64, requires_grad=True)
    sublayer = toy_sublayers(n_layers, shape[-1])
    got_inputs, got = hook_mhc(s, x0, sublayer)
    want_inputs, want = plain_mhc(s, x0, sublayer)
    for g, w in zip(got_inputs + [got], want_inputs + [want], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    weight = torch.randn(got.shape, dtype=F64)
    params = [x0, *s.parameters()]
    grads = torch.autograd.grad((got * weight).sum(), params)
    want_grads = torch.autograd.grad((want * weight).sum(), params)
    for name, g, w in zip(["x0"] + [n for n, _ in s.named_parameters()], grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=lambda msg, name=name: f"{name}: {msg}")
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name  # every parameter learns, through Sinkhorn too


def test_norm_epsilon_is_the_mixing_dtypes_not_bfloat16s():
    """A bfloat16 model mixes in float32: the default ε is float32's (1.2e-7), not bfloat16's
    7.8e-3, which would swamp the mean square (4e-4) of streams at the embedding's 0.02 scale."""
    s = perturbed(ManifoldHyperConnections(8, 1, rate=2)).float()
    H = 0.02 * streams(2, (2, 3, 8)).float()
    alpha, beta = s.connection(0, H, torch.bfloat16)
    params = (s.proj[0].double(), s.bias[0].double(), s.scales[0].double())
    pre, post, _, _ = plain_mappings(H.double(), *params, 20, torch.finfo(torch.float32).eps)
    torch.testing.assert_close(alpha[..., 0, :].double(), pre, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(beta[..., 0].double(), post.permute(2, 0, 1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- DeepSeek-V4


def deepseek_v4_connection(n, d, iters, hc_eps, norm_eps):
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

    cfg = DeepseekV4Config(hidden_size=d, num_hidden_layers=1, num_attention_heads=2, head_dim=4, vocab_size=32,
                           hc_mult=n, hc_sinkhorn_iters=iters, hc_eps=hc_eps, rms_norm_eps=norm_eps)
    return DeepseekV4HyperConnection(cfg)


def v4_order(n):
    """Row permutation between V4's ``[pre | post | comb]`` (comb input-major: ``comb[j, i]`` at
    ``2n + j·n + i``) and ours (``res[i, j]`` at ``2n + i·n + j``); a transposition, its own inverse."""
    return list(range(2 * n)) + [2 * n + j * n + i for i in range(n) for j in range(n)]


@pytest.mark.parametrize("direction", ["into ours", "out of ours"])
@pytest.mark.parametrize("dtype, tol", [(F64, dict(rtol=1e-12, atol=1e-13)), (torch.float32, dict(rtol=2e-5, atol=2e-6))])
def test_deepseek_v4_connection_is_ours(direction, dtype, tol):
    """V4's connection (its ``forward`` and its decoder layer's update ``post ⊗ out + combᵀ x``) and
    ours agree once weights are copied. V4 casts to float32 inside (``.float()``): for the float64
    run that cast is made a no-op, so both sides compute in float64."""
    n, d, iters, hc_eps, norm_eps = 3, 8, 5, 1e-6, 1e-6
    torch.manual_seed(7)
    v4 = deepseek_v4_connection(n, d, iters, hc_eps, norm_eps).to(dtype)
    ours = ManifoldHyperConnections(d, 1, rate=n, sinkhorn_iters=iters, hc_eps=hc_eps, norm_eps=norm_eps).to(dtype)
    order = v4_order(n)
    with torch.no_grad():
        if direction == "into ours":
            v4.fn.normal_(0, 0.3), v4.base.normal_(0, 1.0), v4.scale.uniform_(0.5, 1.5)
            for m in range(2):
                ours.proj[m].copy_(v4.fn[order]), ours.bias[m].copy_(v4.base[order]), ours.scales[m].copy_(v4.scale)
        else:
            ours = perturbed(ours).to(dtype)
            v4.fn.copy_(ours.proj[1][order]), v4.base.copy_(ours.bias[1][order]), v4.scale.copy_(ours.scales[1])
    hidden = torch.randn(2, 5, n, d, dtype=dtype)  # V4's layout (batch, seq, hc, dim)
    out = torch.randn(2, 5, d, dtype=dtype)  # a sublayer's output
    as_is = mock.patch.object(torch.Tensor, "float", lambda self, *a, **k: self)
    with as_is if dtype == F64 else contextlib.nullcontext():
        post, comb, collapsed = v4(hidden)
    updated = post.to(dtype).unsqueeze(-1) * out.unsqueeze(-2) + comb.to(dtype).transpose(-1, -2) @ hidden

    H = hidden.permute(2, 0, 1, 3)
    pre_o, post_o, res_o = ours.mappings(1, H)
    state = ours._enter(1, H.to(torch.promote_types(dtype, torch.float32)), dtype)
    torch.testing.assert_close(post_o, post.to(dtype), **tol)
    torch.testing.assert_close(res_o, comb.to(dtype).transpose(-1, -2), **tol)  # V4 stores the transpose
    torch.testing.assert_close(state.h.to(dtype), collapsed, **tol)  # read: Σ_j pre_j x_j
    torch.testing.assert_close((state.carried + state.beta * out).permute(1, 2, 0, 3).to(dtype), updated, **tol)
    # the hook itself: the MLP connection is the last one, so residual returns the streams' sum
    total, _ = ours.residual(0, 1, state.h, out, state)
    torch.testing.assert_close(total, updated.sum(2), **tol)


# ----------------------------------------------------------------------------- init


@pytest.mark.parametrize("rate", [1, 2, 4])
def test_init_reads_one_stream_most_and_otherwise_is_the_neutral_static_part(rate):
    """b_pre = σ⁻¹ of 2/(n+1) on stream m mod n and 1/(n+1) elsewhere (½ for n = 1), φ = 0, α = 0.01:
    H_pre sums to 1, H_post = 1, H_res = J/n exactly."""
    s = ManifoldHyperConnections(d_model=64, n_layers=3, rate=rate)
    assert s.n_connections == 6 and len(s.proj) == len(s.bias) == len(s.scales) == 6
    for m in range(6):
        assert not s.proj[m].any() and s.proj[m].shape == (rate * (rate + 2), rate * 64)
        assert not s.bias[m][rate:].any() and torch.equal(s.scales[m], torch.full((3,), 0.01))
        pre, post, res = s.to(F64).mappings(m, streams(rate, (2, 3, 64)))
        want = torch.full((rate,), 1 / (rate + 1) if rate > 1 else 0.5, dtype=F64)
        want[m % rate] *= 2 if rate > 1 else 1
        torch.testing.assert_close(pre, want.expand_as(pre), rtol=1e-7, atol=0)  # (b is a float32 parameter)
        torch.testing.assert_close(post, torch.ones_like(post), rtol=0, atol=1e-15)
        torch.testing.assert_close(res, torch.full_like(res, 1 / rate), rtol=0, atol=1e-15)
    drawn = ManifoldHyperConnections(d_model=64, n_layers=1, rate=rate, proj_std=0.02).proj[0]
    assert abs(drawn.std().item() - 0.02) < 0.004


def tiny(strategy="baseline", options=None, **overrides):
    kw = dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32, norm_eps=1e-30)
    return ModelConfig(**{**kw, **overrides}, strategy=strategy, strategy_options=options or {})


def with_baseline_weights(cfg, baseline):
    torch.manual_seed(3)
    model = CausalLM(cfg).double()
    missing, unexpected = model.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("strategy.") for k in missing)
    return model


@pytest.mark.parametrize("form", FORMS)
def test_model_starts_as_the_baseline(form):
    """At init the model is the baseline up to the final norm's ε (here 1e-30): every stream is the
    baseline's residual stream, each sublayer reads it, the final norm n times it. A random φ
    (``proj_std``, DeepSeek-V4's init) moves the logits by O(α)."""
    torch.manual_seed(0)
    baseline = CausalLM(tiny()).double()
    x = torch.randint(0, 61, (2, 7))
    want = baseline(x).logits
    # (our form adds attention to H_pre·x itself, whose weights sum to 1 up to b_pre's float32 rounding)
    tol = dict(rtol=1e-12, atol=1e-12) if form == "authors" else dict(rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(with_baseline_weights(tiny("mhc", {"form": form}), baseline)(x).logits, want, **tol)
    drawn = with_baseline_weights(tiny("mhc", {"form": form, "proj_std": 0.02}), baseline)(x).logits
    gap = (drawn - want).abs().max() / want.abs().max()
    assert 1e-8 < gap < 1e-2, gap


def test_unequal_read_weights_break_the_streams_symmetry():
    """Why H_pre starts unequal: with equal read weights the streams are interchangeable, so every
    stream's write bias gets the same gradient (they could never become different)."""
    torch.manual_seed(0)
    x = torch.randint(0, 61, (2, 7))
    spreads = {}
    for equal in (True, False):
        model = CausalLM(tiny("mhc", norm_eps=1e-6)).double()
        n = model.strategy.rate
        if equal:
            with torch.no_grad():
                for b in model.strategy.bias:
                    b[:n] = -math.log(n - 1)  # σ = 1/n on every stream
        model(x).logits.pow(2).mean().backward()
        post = model.strategy.bias[2].grad[n : 2 * n]
        spreads[equal] = ((post.max() - post.min()) / post.abs().max()).item()
    assert spreads[True] < 1e-12 and spreads[False] > 1e-3, spreads


def test_preserving_start_is_the_init_without_a_random_projection():
    """The Hugging Face adapter's start (tests/test_hf_patch.py runs it on every family)."""
    assert ManifoldHyperConnections.preserving_options({}) == {"proj_std": 0.0}
    assert ManifoldHyperConnections.preserving_options({"rate": 1}) == {"rate": 1, "proj_std": 0.0}
    with pytest.raises(ValueError, match="proj_std=0.0"):
        ManifoldHyperConnections.preserving_options({"proj_std": 0.02})
    with pytest.raises(ValueError, match="rate=1 only in form='authors'"):
        ManifoldHyperConnections.preserving_options({"rate": 1, "form": "ours"})


# ----------------------------------------------------------------------------- registry, options


def test_registered_with_its_builder():
    assert STRATEGIES["mhc"] is ManifoldHyperConnections and issubclass(ManifoldHyperConnections, HyperConnections)
    cfg = mhc("tiny", rate=3, sinkhorn_iters=7, form="ours")
    assert (cfg.strategy, dict(cfg.strategy_options)) == ("mhc", {"rate": 3, "sinkhorn_iters": 7, "form": "ours"})
    s = CausalLM(cfg).strategy
    assert (s.rate, s.sinkhorn_iters, s.form, s.n_connections) == (3, 7, "ours", cfg.n_layers)
    assert CausalLM(mhc("tiny")).strategy.n_connections == 2 * cfg.n_layers  # per sublayer by default


@pytest.mark.parametrize(
    "options, match",
    [
        ({"rate": 0}, "rate must be an integer >= 1"),
        ({"rate": 2.0}, "rate must be an integer >= 1"),
        ({"rate": True}, "rate must be an integer >= 1"),
        ({"sinkhorn_iters": 0}, "sinkhorn_iters must be an integer >= 1"),
        ({"form": "sublayer"}, r"form must be one of \('ours', 'authors'\)"),
        ({"proj_std": -0.1}, "proj_std and hc_eps must be >= 0"),
        ({"hc_eps": -1e-6}, "proj_std and hc_eps must be >= 0"),
        ({"scale_init": float("nan")}, "scale_init must be a finite number"),
        ({"hc_eps": "1e-6"}, "hc_eps must be a finite number"),
        ({"norm_eps": -1.0}, "norm_eps must be None or a finite number >= 0"),
        ({"iters": 20}, "strategy_options"),
    ],
)
def test_bad_options_name_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        tiny("mhc", options)


@given(iters=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)))
def test_any_bad_iteration_count_is_refused(iters):
    with pytest.raises(ValueError, match="sinkhorn_iters must be an integer >= 1"):
        ManifoldHyperConnections(8, 2, sinkhorn_iters=iters)


def test_hook_arguments_are_checked():
    s, x = ManifoldHyperConnections(8, 2), torch.randn(1, 2, 8)
    state = s.init_state(x)[1]
    with pytest.raises(ValueError, match="layer must be in"):
        s.residual(2, 0, x, x, state)
    with pytest.raises(ValueError, match="sublayer must be 0"):
        s.residual(0, 2, x, x, state)
    with pytest.raises(ValueError, match="connection index must be in"):
        s.mappings(4, torch.randn(4, 1, 2, 8))
