"""CausalLM against the independent reference LM (tests/reference_model.py), every strategy.

Float64, 5–6 layers, GQA, every parameter perturbed away from its (often identity) init so each
routing weight matters: logits, every parameter gradient, and decode through the KV cache.
"""

import pytest
import torch

import reference_model as ref
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM, KVCache
from value_routing import STRATEGIES

CASES = [
    ("baseline", {}, {}),
    ("baseline", {}, {"qk_norm": True, "tie_embeddings": False}),
    ("baseline", {}, {"qk_norm": True, "qk_norm_eps": 1e-3, "ffn_realloc": True}),  # paper-preset fields
    ("baseline", {}, {"layernorm_scaling": True}),  # the normalization baselines of the evidence issue
    ("baseline", {}, {"peri_norm": True, "qk_norm": True}),
    ("baseline", {}, {"peri_norm": True, "layernorm_scaling": True, "tie_embeddings": False}),
    ("satformer", {}, {"peri_norm": True, "layernorm_scaling": True}),
    ("mudd", {"form": "authors"}, {"layernorm_scaling": True}),  # scaled separate q/k/v norms
    # the converter's fields (Qwen2's q/k/v bias, Qwen3's explicit head_dim with qk-norm)
    ("baseline", {}, {"qkv_bias": True, "tie_embeddings": False}),
    ("baseline", {}, {"head_dim": 12, "qk_norm": True}),
    ("satformer", {"fuse_projection": True}, {"qkv_bias": True, "head_dim": 6}),  # bias beside the fused gate rows
    ("mudd", {"form": "authors"}, {"qkv_bias": True, "head_dim": 10}),  # separate q/k/v inputs: the split bias
    # fixed λ are float32 buffers (0.3 would round): values exact in float32
    ("static", {"mode": "fixed", "lambda1": 0.375, "lambda2": 0.75}, {}),
    ("static", {"mode": "learnable"}, {"qk_norm": True}),
    ("static", {"mode": "softmax"}, {}),
    *(("satformer", {"act": act}, {}) for act in ("relu", "sigmoid", "tanh", "identity", "softmax", "softmax_sigmoid")),
    ("satformer", {"act": "relu", "last_k": 2}, {}),
    ("satformer", {"act": "softmax_sigmoid", "last_k": 3}, {"qk_norm": True}),
    ("satformer", {"act": "sigmoid", "fuse_projection": True}, {}),
    ("satformer", {"act": "relu", "bias_init": 0.5}, {}),
    ("satformer", {"act": "tanh", "bias_init": 0.5, "last_k": 2, "fuse_projection": True}, {}),
    ("satformer", {"gate_scale": 0.0}, {}),  # the function-preserving start of the HF adapter
    ("satformer", {"act": "sigmoid", "gate_scale": 0.5, "last_k": 2, "fuse_projection": True}, {}),
    ("dense", {}, {}),
    ("dense", {"dilation": 2}, {}),
    ("dense", {"dilation": 2, "period": 2}, {"n_layers": 6}),
    ("dense", {"period": 3, "impl": "stack"}, {"n_layers": 6}),
    ("mudd", {}, {}),
    ("mudd", {"impl": "stack", "norm_eps": 1e-3}, {"qk_norm": True}),
    ("mudd", {"form": "authors"}, {}),
    ("mudd", {"form": "authors", "impl": "stack", "norm_eps": 1e-3}, {"qk_norm": True, "n_layers": 6}),
    ("hyper", {}, {}),
    ("hyper", {"rate": 3, "norm_eps": 1e-3}, {"n_layers": 6}),
    ("hyper", {"rate": 2, "dynamic": False}, {"tie_embeddings": False}),
    ("hyper", {"form": "authors"}, {}),
    ("hyper", {"form": "authors", "rate": 3, "norm_eps": 1e-3}, {"n_layers": 6}),
    ("hyper", {"form": "authors", "rate": 2, "dynamic": False}, {}),
    ("attnres", {}, {}),
    ("attnres", {"impl": "stack", "norm_eps": 1e-3}, {"qk_norm": True}),
    ("attnres", {"block_size": 2}, {}),
    ("attnres", {"block_size": 4, "impl": "stack"}, {"n_layers": 6}),
    ("attnres", {"block_size": 6, "norm_eps": 1e-3}, {"tie_embeddings": False}),  # 10 sublayers: last block partial
    ("attnres", {"scale_by_sources": True}, {}),  # the function-preserving start of the HF adapter
    ("attnres", {"scale_by_sources": True, "block_size": 4}, {"n_layers": 6}),
    ("lerp", {}, {}),
    ("lerp", {"init_std": 0.02, "bias_init": 2.0}, {"qk_norm": True, "n_kv_heads": 4}),
    ("lerp", {}, {"n_kv_heads": 1, "tie_embeddings": False}),
    ("lerp", {"mix_scale": 0.0}, {}),  # the function-preserving start of the HF adapter
    ("lerp", {"mix_scale": 0.5, "bias_init": 1.0}, {"n_kv_heads": 4}),
    ("shortcut", {}, {}),
    ("shortcut", {"x0_norm": True, "resid_init": 0.5, "x0_init": 0.25}, {"qk_norm": True}),
    ("shortcut", {"gate": True}, {}),
    ("shortcut", {"gate": True, "x0_norm": True, "norm_eps": 1e-3}, {"n_layers": 6, "tie_embeddings": False}),
    ("value_embed", {}, {}),  # gated, "speedrun" at 5 layers: layers 1-4, one table each
    ("value_embed", {"gate": False}, {"qk_norm": True}),
    ("value_embed", {"layers": "shared"}, {"n_layers": 6}),  # tables 0, 1, 2 on layers 0-2 and 3-5
    ("value_embed", {"layers": "every", "gate": False}, {"n_kv_heads": 1, "tie_embeddings": False}),
    ("value_embed", {"layers": [4, 0, -3], "tables": [1, 0, 1], "gate_width": 3, "init_std": 0.05},
     {"n_kv_heads": 4}),
    ("mhc", {}, {}),
    ("mhc", {"rate": 3, "sinkhorn_iters": 3, "norm_eps": 1e-3}, {"n_layers": 6}),
    ("mhc", {"rate": 2, "sinkhorn_iters": 1, "hc_eps": 1e-3}, {"tie_embeddings": False}),  # DeepSeek-V4's floors
    ("mhc", {"form": "ours"}, {}),
    ("mhc", {"form": "ours", "rate": 1, "sinkhorn_iters": 2}, {"qk_norm": True}),
]
IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in {**o, **m}.items())}" for s, o, m in CASES]
TOL = dict(rtol=1e-9, atol=1e-11)


def config(strategy, options, overrides) -> ModelConfig:
    kw = dict(vocab_size=53, d_model=32, n_layers=5, n_heads=4, n_kv_heads=2, d_ff=40, max_seq_len=16,
              norm_eps=1e-5, rope_theta=500.0)
    return ModelConfig(**{**kw, **overrides}, strategy=strategy, strategy_options=options)


def spec(cfg: ModelConfig) -> ref.Spec:
    return ref.Spec(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
        d_ff=cfg.d_ff_per_layer, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps, qk_norm=cfg.qk_norm,
        qk_norm_eps=cfg.qk_norm_eps, layernorm_scaling=cfg.layernorm_scaling, peri_norm=cfg.peri_norm,
        head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias,
        tie_embeddings=cfg.tie_embeddings, strategy=cfg.strategy, options=dict(cfg.strategy_options),
    )


def model_and_params(cfg: ModelConfig) -> tuple[CausalLM, dict[str, torch.Tensor]]:
    """A float64 model with every parameter perturbed, and a detached copy of its weights by name."""
    torch.manual_seed(1)
    model = CausalLM(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.abs().mean().clamp(min=0.05) * torch.randn_like(p))
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    return model, params


def tokens(batch, seq, seed=0):
    return torch.randint(0, 53, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_cases_cover_every_registered_strategy():
    assert {s for s, _, _ in CASES} == set(STRATEGIES) == set(ref.ROUTINGS)


@pytest.mark.parametrize("strategy, options, overrides", CASES, ids=IDS)
def test_logits_and_gradients_equal_reference(strategy, options, overrides):
    cfg = config(strategy, options, overrides)
    model, params = model_and_params(cfg)
    x = tokens(2, 9)
    logits = model(x).logits
    expected = ref.forward(params, spec(cfg), x)
    torch.testing.assert_close(logits, expected, **TOL)

    weight = torch.randn(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (logits * weight).sum().backward()
    (expected * weight).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and params[name].grad is not None, name
        torch.testing.assert_close(p.grad, params[name].grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert params.keys() == dict(model.named_parameters()).keys()


def test_hyper_authors_norm_epsilon_follows_the_float64_input():
    """The authors' dynamic norm is nn.RMSNorm without eps: finfo(input dtype).eps, 2.2e-16 in
    float64. With streams of RMS ~1e-5, float32's 1.2e-7 would dominate mean(H²) ~1e-10."""
    cfg = config("hyper", {"form": "authors"}, {})
    model, params = model_and_params(cfg)
    with torch.no_grad():
        for w in (model.embed.weight, params["embed.weight"]):
            w.mul_(1e-5 / w.pow(2).mean().sqrt())
    x = tokens(2, 9)
    torch.testing.assert_close(model(x).logits, ref.forward(params, spec(cfg), x), **TOL)


@pytest.mark.parametrize("strategy, options, overrides", CASES, ids=IDS)
def test_decode_through_cache_equals_reference(strategy, options, overrides):
    cfg = config(strategy, options, overrides)
    model, params = model_and_params(cfg)
    x = tokens(2, 9, seed=5)
    with torch.no_grad():
        expected = ref.forward(params, spec(cfg), x)
        cache = KVCache.allocate(cfg, 2, 12, dtype=torch.float64)
        out = model(x[:, :4], cache=cache)  # prefill, then one token at a time
        steps, cache = [out.logits], out.cache
        for t in range(4, 9):
            out = model(x[:, t : t + 1], cache=cache)
            steps.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **TOL)
