"""Gate analysis: α recomputed from the weights, zero fractions, byte classes, report files."""

import json

import pytest
import torch
import torch.nn.functional as F

from blocks import AttentionContext
from recipes.eval.analyze import TOKEN_CLASSES, analyze_gates, gate_values, token_classes, write_report
from recipes.lm.builders import model_config, satformer
from recipes.lm.model import CausalLM
from value_routing.attention import AttentionMask, get_backend
from value_routing.strategies import BlockInput

DIMS = dict(vocab_size=256, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32)


def _model(act: str = "relu", **options) -> CausalLM:
    model = CausalLM(satformer("tiny", act=act, **options, **DIMS))
    for gate in model.strategy.gates:  # larger gates than the init so that α spreads around 0
        torch.nn.init.normal_(gate.weight, std=0.5)
    return model


def _reference_alpha(model: CausalLM, tokens: torch.Tensor, act) -> dict[int, torch.Tensor]:
    """Replay the forward pass by hand: h_n = RMSNorm(x_n), α_n = act(h_n W_αᵀ), x_{n+1} = block(x_n)."""
    cfg, out, v1 = model.cfg, {}, None
    x = model.embed(tokens)
    rope = (model.rope_cos[: tokens.shape[1]], model.rope_sin[: tokens.shape[1]])
    for i, block in enumerate(model.blocks):
        w = block.attn_norm.weight
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w
        if i >= 1:
            out[i] = act(h @ model.strategy.gates[i - 1].weight.t())
        x, v1 = block(BlockInput(x), model.strategy, v1, AttentionContext(rope, AttentionMask(0, None), get_backend("sdpa")))
    return out


@pytest.mark.parametrize("act, fn", [("relu", F.relu), ("sigmoid", torch.sigmoid), ("identity", lambda t: t)])
def test_alpha_matches_reference(act, fn):
    model = _model(act)
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        got, want = gate_values(model, tokens), _reference_alpha(model, tokens, fn)
    assert sorted(got) == [1, 2]
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer], atol=1e-5, rtol=1e-5)
    assert all(not block._forward_pre_hooks for block in model.blocks)  # hooks removed afterwards


def test_summary_statistics_and_classes():
    model = _model("relu", last_k=1)
    tokens = torch.randint(0, 256, (3, 16))
    alpha = gate_values(model, tokens)[2]  # only the last layer is gated
    s = analyze_gates(model, tokens)
    assert s["gated_layers"] == [2] and s["tokens"] == 48 and s["n_kv_heads"] == 2
    zero = (alpha == 0).double()
    assert 0 < zero.mean() < 1
    torch.testing.assert_close(torch.tensor(s["frac_zero"][0], dtype=torch.float64), zero.mean((0, 1)), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.tensor(s["mean_alpha"][0], dtype=torch.float64), alpha.double().mean((0, 1)), atol=1e-6, rtol=0)
    assert s["overall"]["frac_zero"] == pytest.approx(zero.mean().item())
    classes = token_classes(tokens)
    assert sum(c["count"] for c in s["per_class"].values()) == 48
    for i, name in enumerate(TOKEN_CLASSES):
        stats, sel = s["per_class"][name], classes == i
        assert stats["count"] == int(sel.sum())
        if stats["count"]:
            torch.testing.assert_close(torch.tensor(stats["mean_alpha"][0], dtype=torch.float64), alpha[sel].double().mean(0),
                                       atol=1e-6, rtol=0)
        else:
            assert stats["mean_alpha"] is None


def test_token_classes():
    text = b"if x1:\n\treturn _a + 9 # def\r\xc3"
    got = [TOKEN_CLASSES[i] for i in token_classes(torch.tensor([list(text)]))[0].tolist()]
    want = (["keyword", "letter", "whitespace", "letter", "digit", "punct", "newline", "whitespace", "keyword"]
            + ["letter"] * 5 + ["whitespace", "letter", "letter", "whitespace", "punct", "whitespace", "digit"]
            + ["whitespace", "punct", "whitespace", "keyword", "letter", "letter", "newline", "other"])
    assert got == want
    assert token_classes(torch.tensor([[300, 10]])).tolist() == [[TOKEN_CLASSES.index("other"), 0]]


def test_report_files(tmp_path):
    model = _model("relu")
    summary = analyze_gates(model, torch.tensor([list(b"def f(x):\n    return x  # 12")]))
    paths = write_report(summary, tmp_path / "out")
    for key in ("heatmap", "by_class"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(paths["summary"].read_text())
    assert {"act", "gated_layers", "n_kv_heads", "tokens", "mean_alpha", "frac_zero", "overall", "per_class"} <= set(loaded)
    assert set(loaded["per_class"]) == set(TOKEN_CLASSES)
    assert {"mean_alpha", "std_alpha", "min_alpha", "max_alpha", "frac_zero"} <= set(loaded["overall"])
    assert loaded["per_class"]["keyword"]["count"] == 2 and loaded["per_class"]["other"]["count"] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gate_by_class.png", "gate_heatmap.png", "summary.json"]


def test_non_gate_model_is_rejected():
    model = CausalLM(model_config("tiny", "baseline", **DIMS))
    with pytest.raises(ValueError, match="SelectiveGate"):
        analyze_gates(model, torch.randint(0, 256, (1, 8)))
    with pytest.raises(ValueError, match="tokens must have shape"):
        analyze_gates(_model(), torch.randint(0, 256, (8,)))


def test_load_model_from_safetensors(tmp_path):
    from dataclasses import asdict

    from recipes.train.checkpoint import load_model, save_weights

    model = _model("relu")
    save_weights(model.state_dict(), tmp_path / "with_config.safetensors", model_config=asdict(model.cfg))
    loaded = load_model(tmp_path / "with_config.safetensors")
    tokens = torch.randint(0, 256, (1, 8))
    torch.testing.assert_close(gate_values(loaded, tokens)[2], gate_values(model, tokens)[2], atol=0, rtol=0)

    bare = CausalLM(satformer("tiny"))  # no config in the file: loaded into the --size model
    save_weights(bare.state_dict(), tmp_path / "bare.safetensors")
    torch.testing.assert_close(load_model(tmp_path / "bare.safetensors", config=satformer("tiny")).embed.weight, bare.embed.weight)
    with pytest.raises(ValueError, match="checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no model_config"):
        load_model(tmp_path / "bare.safetensors")
