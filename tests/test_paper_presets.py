"""Paper presets (issue 12): the SATFormer authors' configs per size × strategy, and the
authors' forms of MUDDFormer and Hyper-Connections against their equations written out here."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from blocks import AttentionContext, BlockSpec, TransformerBlock, rope_tables
from recipes.train import pretrain
from recipes.lm import builders
from recipes.lm.builders import model_config, muddformer, param_counts, resformer
from recipes.lm.config import ModelConfig, realloc_ffn_width
from recipes.lm.model import CausalLM
from recipes.train import OptimConfig, make_optimizer
from value_routing import STRATEGIES, DynamicDenseAggregation, HyperConnections, NoReuse
from value_routing.attention import AttentionMask, get_backend
from value_routing.strategies.base import BlockInput

F64 = torch.float64

#: The issue's table: d_model, layers, heads, d_ff, batch × accum per GPU, lr, min_lr, warmup / total tokens.
TABLE = {
    "small": (768, 11, 12, 3072, 64, 1, 2e-3, 2e-4, 0.05e9, 5e9),
    "medium": (1024, 18, 16, 4096, 32, 2, 1.5e-3, 1.5e-4, 0.1e9, 10e9),
    "large": (1536, 19, 24, 6144, 16, 4, 1e-3, 1e-4, 0.2e9, 20e9),
    "xl": (2048, 24, 32, 5632, 8, 8, 8e-4, 8e-5, 0.3e9, 30e9),
}


#: The named builders of the strategies (thin wrappers of ``model_config``).
NAMED = {"baseline": builders.transformer, "static": builders.resformer, "satformer": builders.satformer,
         "dense": builders.denseformer, "mudd": builders.muddformer, "hyper": builders.hyperconnections,
         "attnres": builders.attnres,
         "lerp": builders.lerp_value_residual, "shortcut": builders.embedding_shortcut,
         "value_embed": builders.value_embeddings, "mhc": builders.mhc}


@pytest.mark.parametrize("size", sorted(TABLE))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_number_of_the_table(size, strategy):
    d, layers, heads, d_ff, batch, accum, lr, min_lr, warmup, total = TABLE[size]
    for cfg in (model_config(size, strategy), NAMED[strategy](size)):
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff) == (d, layers, heads, heads, d_ff)
        assert (cfg.vocab_size, cfg.max_seq_len, cfg.tie_embeddings, cfg.rope_theta) == (32000, 4096, True, 10000.0)
        assert (cfg.norm_eps, cfg.qk_norm, cfg.qk_norm_eps, cfg.init_std) == (1e-6, True, 1e-5, 0.02)
        rate = cfg.strategy_options.get("rate", 4)
        assert cfg.out_proj_std == pytest.approx(0.02 / math.sqrt(rate) if strategy == "hyper" else 0.02)
        assert cfg.ffn_realloc == (strategy == "mudd")
        form = {"mudd": {"form": "authors"}, "hyper": {"form": "authors"}, "static": {"mode": "softmax"}}
        assert form.get(strategy, {}).items() <= dict(cfg.strategy_options).items()
    world = 8
    run = pretrain.resolve(pretrain.parse_args(["--config", size, "--strategy", strategy]), world=world)
    assert (run.micro_batch, run.grad_accum, run.seq_len) == (batch, accum, 4096)
    assert (run.lr, run.lr * run.min_lr_ratio) == pytest.approx((lr, min_lr))
    step_tokens = batch * accum * 4096 * world
    assert (run.steps, run.warmup) == (int(total / step_tokens), int(warmup / step_tokens))
    assert (run.weight_decay, run.grad_clip, run.decay) == (0.1, 1.0, "all")


def test_committed_param_counts_match_the_builders():
    """The docs' table is rendered from this file: regenerate it with
    ``python -m recipes.tools.params --json > docs/assets/param_counts.json``."""
    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/assets/param_counts.json").read_text())
    assert committed == param_counts()
    assert abs(committed["small"]["baseline"] / 1e6 - 130) < 2 and abs(committed["xl"]["baseline"] / 1e9 - 1.3) < 0.01


def test_optimizer_decays_all_params_or_matrices():
    model = CausalLM(model_config("tiny", "satformer"))
    for decay, expect_no_decay in (("all", 0), ("matrices", sum(p.ndim < 2 for p in model.parameters()))):
        opt = make_optimizer(model, OptimConfig(decay=decay))
        no_decay = [p for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]]
        assert len(no_decay) == expect_no_decay and expect_no_decay != len(list(model.parameters()))
        assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_tiny_keeps_our_choices():
    cfg = model_config("tiny", "hyper")
    assert (cfg.qk_norm, cfg.ffn_realloc, cfg.strategy_options) == (False, False, {})
    assert cfg.out_proj_std == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layers))
    assert resformer("tiny").strategy_options == {} and muddformer("tiny", form="authors").ffn_realloc


# ----------------------------------------------------------------------------- param_realloc


def nearest_multiple_256(n):
    """Nearest multiple of 256, ties to the lower one, at least 256 (enumerated, not arithmetic)."""
    candidates = [k * 256 for k in range(1, n // 256 + 3)]
    return min(candidates, key=lambda c: (abs(c - n), c))


@pytest.mark.parametrize("n_layers", [2, 3, 11, 18, 19, 24])
@pytest.mark.parametrize("d_ff", [512, 3072, 5632, 6144])
def test_realloc_widths_follow_the_formula(n_layers, d_ff):
    cfg = ModelConfig(vocab_size=8, d_model=16, n_layers=n_layers, n_heads=2, d_ff=d_ff, ffn_realloc=True)
    expect = [nearest_multiple_256(round((0.5 * (n_layers - i) + 1.5 * (i - 1)) / (n_layers - 1) * d_ff))
              for i in range(1, n_layers + 1)]
    assert list(cfg.d_ff_per_layer) == expect
    with torch.device("meta"):
        assert [b.ffn.w2.in_features for b in CausalLM(cfg).blocks] == expect


def test_realloc_hand_computed():
    assert [realloc_ffn_width(3072, i, 11) for i in (1, 2, 6, 11)] == [1536, 1792, 3072, 4608]
    assert realloc_ffn_width(768, 1, 2) == 256 and realloc_ffn_width(700, 1, 1) == 700  # 384: tie down; L = 1 kept
    assert realloc_ffn_width(1280, 1, 2) == 512  # 640 = 2.5 · 256: tie down
    assert muddformer("small").d_ff_per_layer[0] == 1536 and muddformer("small", form="ours").d_ff_per_layer == (3072,) * 11


# ----------------------------------------------------------------------------- init facts


def test_init_facts_of_the_authors_forms():
    torch.manual_seed(0)
    mudd = DynamicDenseAggregation(256, 4, form="authors")
    for layer in range(4):
        assert torch.all(mudd.static[layer] == 0) and torch.all(mudd.post_norms[layer] == 1e-3)
        assert torch.all(mudd.pre_norms[layer] == 1) and torch.all(mudd.w2[layer].weight == 0)
    w1 = torch.cat([w.weight.flatten() for w in mudd.w1])
    assert w1.std().item() == pytest.approx(1 / 256, rel=0.05) and mudd.separate_qkv_norms
    hc = HyperConnections(8, 3, rate=4, form="authors")
    assert len(hc.static_alpha) == 6
    for m in range(6):
        alpha = hc.static_alpha[m].view(4, 5)
        assert torch.equal(alpha[:, 0], torch.eye(4)[m % 4]) and torch.equal(alpha[:, 1:], torch.eye(4))
        assert torch.all(hc.norm_scale[m] == 1) and torch.all(hc.proj[m] == 0)


@pytest.mark.parametrize("strategy, std", [("baseline", 0.02), ("hyper", 0.01), ("mudd", 0.02)])
def test_no_depth_rescale_of_output_projections(strategy, std):
    cfg = model_config("small", strategy, d_model=256, n_heads=4, d_ff=1024, n_layers=4, vocab_size=64)
    torch.manual_seed(0)
    model = CausalLM(cfg)
    for name in ("attn.wo", "ffn.w2", "attn.wqkv", "ffn.w13"):
        w = torch.cat([b.get_submodule(name).weight.flatten() for b in model.blocks])
        assert w.std().item() == pytest.approx(std if name in ("attn.wo", "ffn.w2") else 0.02, rel=0.03)
    assert all(b.attn.q_norm.eps == 1e-5 and b.attn_norm.eps == 1e-6 for b in model.blocks)


@pytest.mark.parametrize("given_q", [True, False])
def test_separate_qkv_norms_norm_each_input(given_q):
    """The authors' MUDDFormer block: q, k and v inputs each through their own learned norm
    (block 1 reads the residual stream for all three)."""
    torch.manual_seed(0)
    block = TransformerBlock(BlockSpec(0, 16, 4, 2, 32, separate_qkv_norms=True)).to(F64)
    with torch.no_grad():
        for norm in (block.attn_norm, block.attn_norm_k, block.attn_norm_v):
            norm.weight.copy_(torch.rand(16, dtype=F64) + 0.5)
    x, q, k, v = torch.randn(4, 1, 5, 16, dtype=F64).unbind(0)
    inp = BlockInput(x, q, k, v) if given_q else BlockInput(x)
    q, k, v = (q, k, v) if given_q else (x, x, x)
    cos, sin = rope_tables(4, 5)
    ctx = AttentionContext((cos, sin), AttentionMask(0, None), get_backend("sdpa", "cpu"))
    out, _ = block(inp, NoReuse(1), None, ctx)
    normed = [rms(t, 1e-6) * n.weight for t, n in zip((q, k, v), (block.attn_norm, block.attn_norm_k, block.attn_norm_v))]
    a = x + block.attn.attend(*block.attn.project(*normed)[:3], ctx)
    torch.testing.assert_close(out, a + block.ffn(rms(a, 1e-6) * block.ffn_norm.weight))


# ----------------------------------------------------------------------------- equations


def rms(x, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


class ToySublayers:
    """Per-token stand-ins: attention reads q, k, v; the MLP reads one input."""

    def __init__(self, n_layers, dim):
        self.weights = [torch.randn(4, dim, dim, dtype=F64, requires_grad=True) for _ in range(n_layers)]

    def attn(self, layer, inp):
        wq, wk, wv, _ = self.weights[layer] / math.sqrt(inp.x.shape[-1])
        q, k, v = (inp.x if t is None else t for t in (inp.q, inp.k, inp.v))
        return torch.tanh(q @ wq) * (k @ wk) + torch.sin(v @ wv)

    def mlp(self, layer, h):
        return torch.cos(h @ (self.weights[layer][3] / math.sqrt(h.shape[-1])))


def run_hooks(s, x0, toy):
    """The CausalLM loop, residual hook included."""
    inp, state = s.init_state(x0)
    for layer in range(s.n_layers):
        a, state = s.residual(layer, 0, inp.x, toy.attn(layer, inp), state)
        y, state = s.residual(layer, 1, a, toy.mlp(layer, a), state)
        inp, state = s.block_output(layer, y, state)
    return inp.x


def mudd_authors_reference(s, x0, toy):
    """X^c_i = g_post ⊙ n(Σ_j A^c_ij g_pre_ij ⊙ n(X_j)) + X_i, A_i = GELU(n(X_i) W1) W2 + a_i."""
    xs, inp, d = [x0], BlockInput(x0), x0.shape[-1]
    for layer in range(s.n_layers):
        a = toy.attn(layer, inp) + inp.x
        xs.append(a + toy.mlp(layer, a))
        c, n = (4 if layer < s.n_layers - 1 else 1), layer + 2
        w = gelu(rms(xs[-1], s.norm_eps) @ s.w1[layer].weight.t()) @ s.w2[layer].weight.t() + s.static[layer]
        w = w.reshape(*w.shape[:-1], c, n)
        pre, post = s.pre_norms[layer].reshape(n, d), s.post_norms[layer].reshape(c, d)
        mixed = [sum(w[..., ci, j, None] * pre[j] * rms(xs[j], s.norm_eps) for j in range(n)) for ci in range(c)]
        streams = [post[ci] * rms(mixed[ci], s.norm_eps) + xs[-1] for ci in range(c)]
        inp = BlockInput(streams[3], streams[0], streams[1], streams[2]) if c == 4 else None
    return streams[0]


def hyper_authors_reference(s, x0, toy):
    """Two connections per block; each: h = A_mᵀH, H' = Bᵀ sublayer(h) + A_rᵀH, with dynamic
    [A_m, A_r]_i = s_α tanh(g ⊙ n(H_i) W_α) + static, B_i likewise from W_β."""
    n, hyper = s.rate, [x0] * s.rate

    def connect(m, hyper, sublayer):
        alphas, betas = [], []
        for i in range(n):
            alpha, beta = s.static_alpha[m].view(n, n + 1)[i], s.static_beta[m][i]
            if s.dynamic:
                dyn = torch.tanh((s.norm_scale[m] * rms(hyper[i], torch.finfo(hyper[i].dtype).eps)) @ s.proj[m].t())
                alpha = s.scales[m][0] * dyn[..., : n + 1] + alpha
                beta = s.scales[m][1] * dyn[..., n + 1 :] + beta
            alphas.append(alpha)
            betas.append(beta)
        out = sublayer(sum(alphas[i][..., 0:1] * hyper[i] for i in range(n)))
        return [betas[j] * out + sum(alphas[i][..., j + 1 : j + 2] * hyper[i] for i in range(n)) for j in range(n)]

    for layer in range(s.n_layers):
        hyper = connect(2 * layer, hyper, lambda h: toy.attn(layer, BlockInput(h)))
        hyper = connect(2 * layer + 1, hyper, lambda h: toy.mlp(layer, h))
    return sum(hyper)


def assert_parity(s, reference, x0, toy):
    params = [x0, *toy.weights, *s.parameters()]
    probe = torch.randn(x0.shape, dtype=F64)
    out, ref = run_hooks(s, x0, toy), reference(s, x0, toy)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad((out * probe).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * probe).sum(), params, allow_unused=True)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def perturbed(s, scale=0.3):
    with torch.no_grad():
        for p in s.parameters():
            p.add_(scale * torch.randn_like(p))
    return s.to(F64)


shapes = st.tuples(st.integers(1, 2), st.integers(1, 4), st.sampled_from([4, 8]))


@given(shape=shapes, n_layers=st.integers(1, 4), impl=st.sampled_from(["buffer", "stack"]))
def test_mudd_authors_matches_equations(shape, n_layers, impl):
    s = perturbed(DynamicDenseAggregation(shape[-1], n_layers, impl=impl, form="authors"))
    x0 = torch.randn(shape, dtype=F64, requires_grad=True)
    assert_parity(s, mudd_authors_reference, x0, ToySublayers(n_layers, shape[-1]))


@given(shape=shapes, n_layers=st.integers(1, 3), rate=st.integers(1, 4), dynamic=st.booleans())
def test_hyper_authors_matches_equations(shape, n_layers, rate, dynamic):
    s = perturbed(HyperConnections(shape[-1], n_layers, rate=rate, dynamic=dynamic, form="authors"))
    x0 = torch.randn(shape, dtype=F64, requires_grad=True)
    assert_parity(s, hyper_authors_reference, x0, ToySublayers(n_layers, shape[-1]))
    assert s.norm_eps is None  # the norm's epsilon follows the activations' dtype
    assert [s.eps(t) for t in (F64, torch.float32, torch.bfloat16)] == [torch.finfo(t).eps for t in
                                                                        (F64, torch.float32, torch.bfloat16)]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DynamicDenseAggregation(8, 2, form="paper"), r"form must be one of \('ours', 'authors'\)"),
        (lambda: HyperConnections(8, 2, form="sub"), r"form must be one of \('ours', 'authors'\)"),
        (lambda: muddformer("small", form="x"), "form must be one of"),
        (lambda: OptimConfig(decay="norms"), r"decay must be one of \('matrices', 'all'\)"),
        (lambda: model_config("tiny", qk_norm_eps=-1.0), "qk_norm_eps must be >= 0 or None"),
        (lambda: model_config("tiny", out_proj_std=-0.1), "out_proj_std must be >= 0 or None"),
        (lambda: model_config("tiny", out_proj_std=float("inf")), r"out_proj_std must be >= 0 or None \(finite\)"),
        (lambda: model_config("tiny", init_std=float("inf")), r"init_std must be >= 0 \(finite\)"),
        (lambda: model_config("tiny", norm_eps=float("nan")), r"norm_eps must be >= 0 \(finite\)"),
        (lambda: model_config("tiny", rope_theta=float("nan")), r"rope_theta must be > 0"),
        (lambda: model_config("tiny", rope_theta=0.0), r"rope_theta must be > 0"),
        (lambda: model_config("tiny", rope_theta=-10000.0), r"rope_theta must be > 0"),
        (lambda: model_config("tiny", ffn_realloc="yes"), "ffn_realloc must be True or False"),
        (lambda: realloc_ffn_width(3072, 0, 4), r"layer must be in \[1, n_layers\]"),
        (lambda: HyperConnections(8, 2, form="authors").residual(0, 2, torch.zeros(1, 1, 8), torch.zeros(1, 1, 8),
                                                                  None), "sublayer must be 0"),
        (lambda: model_config("small", "hyper", strategy_options={"form": "?"}), "form must be one of"),
    ],
)
def test_bad_options_raise_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
