"""MQAR generator, metric and a smoke run of the tiny training routine."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.eval.mqar import (IGNORE_INDEX, MQARConfig, MQARResult, evaluate_mqar, format_mqar, mqar_accuracy,
                               mqar_batch, train_mqar)
from recipes.train import TrainConfig


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def configs(draw):
    n = draw(st.integers(1, 6))
    vocab = draw(st.integers(2 * n + 2, 2 * n + 40))
    seq = draw(st.integers(4 * n, 4 * n + 20))
    return MQARConfig(vocab, seq, n, power_a=draw(st.sampled_from([0.01, 0.5, 1.0])),
                      random_fill=draw(st.booleans()))


@given(configs(), st.integers(1, 4), st.integers(0, 2**31))
def test_batch_structure(cfg, batch, seed):
    inputs, targets = mqar_batch(cfg, batch, _gen(seed))
    n, half = cfg.num_kv_pairs, cfg.vocab_size // 2
    assert inputs.shape == targets.shape == (batch, cfg.seq_len)
    assert inputs.dtype == targets.dtype == torch.long
    assert 0 <= inputs.min() and inputs.max() < cfg.vocab_size
    for x, y in zip(inputs.tolist(), targets.tolist()):
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k < half for k in keys)  # unique keys, key range
        assert len(set(values)) == n and all(half <= v < cfg.vocab_size for v in values)
        pairs = dict(zip(keys, values))
        queries = [t for t, label in enumerate(y) if label != IGNORE_INDEX]
        assert len(queries) == n and all(t >= 2 * n and (t - 2 * n) % 2 == 0 for t in queries)
        assert sorted(x[t] for t in queries) == sorted(keys)  # every key queried exactly once
        for t in queries:
            assert y[t] == pairs[x[t]]  # the target is the value paired with the queried key
        if not cfg.random_fill:
            assert all(x[t] == 0 for t in range(2 * n, cfg.seq_len) if t not in queries)


def test_deterministic_by_seed():
    cfg = MQARConfig(vocab_size=32, seq_len=32, num_kv_pairs=4)
    a, b, c = (mqar_batch(cfg, 8, _gen(s)) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_power_law_prefers_short_gaps():
    cfg = MQARConfig(vocab_size=64, seq_len=256, num_kv_pairs=4, power_a=0.01)
    _, targets = mqar_batch(cfg, 256, _gen())
    gaps = ((targets != IGNORE_INDEX).nonzero()[:, 1] - 8) // 2  # 124 slots
    assert (gaps < 62).float().mean() > 0.7


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_kv_pairs=0), "num_kv_pairs"),
        (dict(vocab_size=17, num_kv_pairs=8), "vocab_size"),
        (dict(seq_len=31, num_kv_pairs=8), "seq_len"),
        (dict(power_a=0.0), "power_a"),
        (dict(power_a=1.5), "power_a"),
    ],
)
def test_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MQARConfig(**kwargs)


def test_invalid_batch():
    with pytest.raises(ValueError, match="batch"):
        mqar_batch(MQARConfig(), 0, _gen())


def test_accuracy_counts_only_queries():
    targets = torch.tensor([[-100, 5, -100, 7], [-100, -100, 6, 4]])
    perfect = torch.tensor([[0, 5, 1, 7], [3, 3, 6, 4]])  # non-query positions are free
    assert mqar_accuracy(perfect, targets) == 1.0
    partial = torch.tensor([[0, 5, 1, 0], [3, 3, 6, 9]])  # 2 of 4 queries right
    assert mqar_accuracy(partial, targets) == 0.5
    assert mqar_accuracy(torch.zeros_like(targets), targets) == 0.0


def test_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        mqar_accuracy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no query"):
        mqar_accuracy(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), -100))


class _Oracle(torch.nn.Module):
    """Answers every query by looking the key up in the pairs at the start (perfect recall)."""

    def __init__(self, cfg: MQARConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, tokens):
        n, vocab = self.cfg.num_kv_pairs, self.cfg.vocab_size
        lookup = torch.zeros(tokens.shape[0], vocab, dtype=torch.long)
        lookup.scatter_(1, tokens[:, 0 : 2 * n : 2], tokens[:, 1 : 2 * n : 2])
        answer = lookup.gather(1, tokens)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(answer, vocab).float()})()


def test_evaluate_with_oracle():
    cfg = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2)
    assert evaluate_mqar(_Oracle(cfg), cfg, batches=2, batch_size=8) == 1.0


def test_training_learns_an_easy_setting():
    """One pair per sequence: copying the one context value is perfect recall. 80 steps of a
    2-layer model (~1 s) reach 0.98 here; chance is 1/8, so >= 0.8 is a wide margin that an
    untrained or mis-trained model cannot reach."""
    cfg = MQARConfig(vocab_size=16, seq_len=8, num_kv_pairs=1)
    train = TrainConfig(steps=80, batch_size=32, seq_len=8, lr=1e-2, warmup=5, eval_batches=4)
    result = train_mqar("satformer", cfg, train, size="tiny", d_model=32, n_layers=2, n_heads=2)
    assert result.strategy == "satformer"
    assert cfg.chance == 1 / 8 and result.accuracy >= 0.8
    with pytest.raises(ValueError, match="strategy"):
        train_mqar("nope", cfg, train)


def test_format_mqar_has_no_time_column():
    """Strategies are trained one after another, so their wall times are no cost comparison: the
    table shows accuracy and loss only (``python -m recipes.bench`` times strategies interleaved)."""
    cfg = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2)
    table = format_mqar([MQARResult("baseline", 0.5, 1.25, 987.6)], cfg)
    header, row = table.splitlines()[1:]
    assert header.split() == ["strategy", "accuracy", "loss"]
    assert row.split() == ["baseline", "0.500", "1.250"] and "987" not in table
