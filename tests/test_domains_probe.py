"""Held-out domains (bits/byte) and the lexical probe: what they score, that the prose domain never
leaks into the training corpus, and the probe's fit against a known answer."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.data import embedded_corpus
from recipes.data.corpus import stdlib_files
from recipes.eval import domains, probe
from test_model import model_for, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_prose_domain_is_not_in_the_training_corpus():
    import pydoc_data.topics

    assert Path(pydoc_data.topics.__file__).resolve() not in {p.resolve() for p in stdlib_files()}
    text = domains.prose_text()
    assert len(text) > 400_000  # ≈ 465 KB on CPython 3.11
    train, _ = embedded_corpus()
    sample = text[5000:5200]  # a stretch of the manual's prose
    assert sample not in bytes(train.numpy())


@given(n=st.integers(10, 500), seq=st.integers(1, 9), windows=st.integers(1, 40))
def test_window_starts_are_in_range_and_spread(n, seq, windows):
    starts = domains.window_starts(n, seq, windows)
    assert len(starts) == windows and starts[0] == 0 and max(starts) == (n - seq - 1 if windows > 1 else 0)
    assert all(s + seq + 1 <= n for s in starts) and starts == sorted(starts)


def test_window_starts_errors():
    with pytest.raises(ValueError, match="need at least seq_len \\+ 1 = 9"):
        domains.window_starts(5, 8, 3)
    with pytest.raises(ValueError, match="windows must be >= 1"):
        domains.window_starts(50, 8, 0)


def test_bits_per_byte_is_the_mean_cross_entropy_in_bits():
    model = model_for(tiny(vocab_size=256, max_seq_len=32))
    data = torch.randint(0, 256, (400,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = domains.bits_per_byte(model, data, seq_len=16, windows=5, batch_size=2)
    nats = []
    for s in domains.window_starts(400, 16, 5):
        w = data[s : s + 17].long()
        logits = model(w[None, :-1]).logits[0]
        nats.append(torch.nn.functional.cross_entropy(logits, w[1:]).item())
    assert math.isclose(got, sum(nats) / len(nats) / math.log(2), rel_tol=1e-9)
    assert model.training is False  # model_for returns eval(); a train-mode model comes back in train mode
    model.train()
    domains.bits_per_byte(model, data, 16, 2)
    assert model.training


def test_domains_report_every_domain_or_its_reason(tmp_path, monkeypatch):
    model = model_for(tiny(vocab_size=256, max_seq_len=32))
    _, val = embedded_corpus(200_000)
    out = domains.evaluate_domains(model, val, seq_len=16, windows=2)
    assert set(out) == {*domains.DOMAINS, "skipped"} or set(out["skipped"]) == {"c"}
    for name in domains.DOMAINS:
        assert name in out["skipped"] or 0 < out[name] < 12  # an untrained model: ~8 bits/byte
    monkeypatch.setattr(domains.sysconfig, "get_paths", lambda: {"include": str(tmp_path / "none")})
    out = domains.evaluate_domains(model, val, seq_len=16, windows=2)
    assert "c" not in out and "no C headers" in out["skipped"]["c"]


def test_ridge_probe_recovers_a_linearly_coded_byte_and_not_an_absent_one():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(256, 300, dtype=torch.float64, generator=gen)
    seq = torch.randint(0, 256, (4000,), generator=gen)
    feats = codes[seq[1:]] + 0.01 * torch.randn(3999, 300, dtype=torch.float64, generator=gen)  # codes byte t
    present = probe.ridge_accuracy(feats[:2000], seq[1:2001], feats[2000:], seq[2001:], ridge=1e-6)
    absent = probe.ridge_accuracy(feats[:2000], seq[:2000], feats[2000:], seq[2000:3999], ridge=1e-6)
    assert present > 0.99 and absent < 0.05
    with pytest.raises(ValueError, match="ridge must be > 0"):
        probe.ridge_accuracy(feats, seq[1:], feats, seq[1:], ridge=0)


@pytest.mark.parametrize("strategy", ["baseline", "hyper", "mudd"])
def test_probe_reads_every_depth_and_the_embedding_holds_the_current_byte(strategy):
    model = model_for(tiny(strategy, vocab_size=256, max_seq_len=64, d_model=64, n_heads=4))
    _, val = embedded_corpus(200_000)
    result = probe.lexical_probe(model, val, seq_len=32, windows=24, offsets=(0, 2))
    assert result["depths"] == list(range(model.cfg.n_layers + 1))
    acc = torch.tensor(result["accuracy"])
    assert acc.shape == (model.cfg.n_layers + 1, 2)
    assert acc[0, 0] > 0.9 and acc[0, 1] < 0.5  # the embedding codes byte t, nothing of byte t-2
    streams = probe.residual_streams(model, val[:32].long()[None])
    first, _ = model.strategy.init_state(model.embed(val[:32].long()[None]))  # hyper: A_mᵀH⁰, not x0 itself
    torch.testing.assert_close(streams[0], first.x.double())
    final = model.norm(streams[-1].to(model.embed.weight.dtype)).double()  # the last depth feeds the final norm
    torch.testing.assert_close(final, model.hidden_states(val[:32].long()[None])[0].double())
    assert not hasattr(model.strategy, "__dict__") or "block_output" not in model.strategy.__dict__  # restored


def test_probe_cli_prints_a_table_and_rejects_bad_flags(tmp_path):
    import dataclasses

    from recipes.train import TrainConfig, make_optimizer
    from recipes.train import checkpoint as ckpt

    model = model_for(tiny(vocab_size=256, max_seq_len=64), dtype=torch.float32)
    ckpt.save_checkpoint(tmp_path, 1, model, make_optimizer(model, TrainConfig()), {},
                         model_config=dataclasses.asdict(model.cfg))
    path = str(ckpt.latest_checkpoint(tmp_path))
    out = probe.main([path, "--windows", "4", "--seq-len", "16", "--json", str(tmp_path / "p.json")])
    assert len(out["accuracy"]) == 4 and (tmp_path / "p.json").is_file()
    for argv, match in ((["--seq-len", "100"], "--seq-len must be <= the model's max_seq_len = 64"),
                        (["--windows", "1", "--seq-len", "16"], "--windows must be >= 2"),
                        (["--offsets", "16", "--seq-len", "16"], "--offsets must be < --seq-len = 16")):
        run = subprocess.run([sys.executable, "-m", "recipes.eval.probe", path, *argv], capture_output=True,
                             text=True, cwd=ROOT)
        assert run.returncode == 2 and match in run.stderr and "Traceback" not in run.stderr, run.stderr
