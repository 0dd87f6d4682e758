r"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology"): data, metric, tiny runs.

A sequence opens with ``num_kv_pairs`` key-value pairs; keys are drawn without replacement
from ``[1, vocab/2)``, values without replacement from ``[vocab/2, vocab)``. Every key is then
queried once, at an even offset after the pairs, the gaps following a power law
:math:`p(g) \propto g^{a-1}` (short gaps likelier, as repeated bigrams in text). At a query the
model must predict the value paired with that key; all other targets are ``-100`` (ignored)::

    inputs   k1  v1  k2  v2  k2  ·   ·   ·   k1  ·
    targets  -   -   -   -   v2  -   -   -   v1  -        (· filler, - ignored)

Filler positions hold random tokens (or ``0`` with ``random_fill=False``).
``python -m recipes.eval.mqar`` trains a small model of each strategy and prints query accuracy.

Reading the numbers: a model first learns to answer with *some* value from the context
(accuracy ≈ ``1 / num_kv_pairs``, well above the uniform chance ``1 / (vocab / 2)``); real recall
needs an induction circuit (layer 0 tags each value with its key, layer 1 matches the query),
which appears abruptly after a plateau. The demo budget (450 steps of 64 sequences) ends around
that transition, so its column is a coarse signal; ``--steps 1500 --batch-size 128`` (~75 s per
strategy) gives the circuit time to form, though when it forms varies with strategy and seed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from recipes.lm.builders import model_config
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from recipes.train.loop import TrainConfig, fit
from recipes.train.optim import make_optimizer
from recipes.lm.checks import check_min
from recipes.lm.cli import flags_of, non_negative_int, positive_float, positive_int, user_errors
from value_routing.strategies import STRATEGIES
from value_routing.typing import Float, Int, Tensor, shapecheck

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MQARConfig:
    """Shape of the task: vocabulary, sequence length, pairs per sequence, query-gap power law."""

    vocab_size: int = 64
    seq_len: int = 64
    num_kv_pairs: int = 8
    power_a: float = 0.01
    random_fill: bool = True

    def __post_init__(self) -> None:
        check_min(self, 1, "num_kv_pairs")
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(
                f"vocab_size must be >= 2 * (num_kv_pairs + 1) = {2 * (self.num_kv_pairs + 1)} so that "
                f"keys [1, vocab/2) and values [vocab/2, vocab) are distinct, got {self.vocab_size}"
            )
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(
                f"seq_len must be >= 4 * num_kv_pairs = {4 * self.num_kv_pairs} (pairs plus one "
                f"query slot per key), got {self.seq_len}"
            )
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1] (1 = uniform gaps), got {self.power_a}")

    @property
    def chance(self) -> float:
        """Accuracy of guessing a uniform value from the value range."""
        return 1 / (self.vocab_size - self.vocab_size // 2)


def _sample_distinct(
    batch: int, low: int, high: int, k: int, generator: torch.Generator
) -> Int[Tensor, "batch k"]:
    """``k`` distinct integers from ``[low, high)`` per row (a random permutation's prefix)."""
    return torch.rand(batch, high - low, generator=generator).argsort(dim=-1)[:, :k] + low


@shapecheck
def mqar_batch(
    cfg: MQARConfig, batch: int, generator: torch.Generator
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """A batch of MQAR ``(inputs, targets)``; targets are ``-100`` except at query positions."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n, half = cfg.num_kv_pairs, cfg.vocab_size // 2
    keys = _sample_distinct(batch, 1, half, n, generator)
    values = _sample_distinct(batch, half, cfg.vocab_size, n, generator)
    if cfg.random_fill:
        inputs = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=generator)
    else:
        inputs = torch.zeros(batch, cfg.seq_len, dtype=torch.long)
    inputs[:, 0 : 2 * n : 2] = keys
    inputs[:, 1 : 2 * n : 2] = values

    slots = (cfg.seq_len - 2 * n) // 2
    gap_p = torch.arange(1, slots + 1, dtype=torch.float64) ** (cfg.power_a - 1)
    gaps = torch.multinomial(gap_p.expand(batch, slots), n, replacement=False, generator=generator)
    query_pos = 2 * n + 2 * gaps
    inputs.scatter_(1, query_pos, keys)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets.scatter_(1, query_pos, values)
    return inputs, targets


def mqar_accuracy(predictions: Int[Tensor, "batch seq"], targets: Int[Tensor, "batch seq"]) -> float:
    """Fraction of query positions (targets != -100) where ``predictions`` equal the target."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions and targets must have the same shape, got {tuple(predictions.shape)} "
                         f"and {tuple(targets.shape)}")
    query = targets != IGNORE_INDEX
    if not query.any():
        raise ValueError("targets has no query positions (every entry is -100)")
    return (predictions[query] == targets[query]).float().mean().item()


@shapecheck
def mqar_loss(logits: Float[Tensor, "batch seq vocab"], targets: Int[Tensor, "batch seq"]) -> Tensor:
    """Cross-entropy over query positions only."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def model_mqar_loss(model: CausalLM, inputs: Tensor, targets: Tensor) -> Tensor:
    """:func:`mqar_loss` of ``model``'s logits (the ``loss_fn`` of :func:`recipes.train.loop.fit`)."""
    return mqar_loss(model(inputs).logits, targets)


@torch.no_grad()
def evaluate_mqar(model: CausalLM, cfg: MQARConfig, batches: int = 4, batch_size: int = 64, seed: int = 1234) -> float:
    """Query accuracy of ``model`` on fixed held-out batches (the same for every model)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    hits = total = 0
    for _ in range(batches):
        inputs, targets = mqar_batch(cfg, batch_size, gen)
        predictions = model(inputs).logits.argmax(-1)
        query = targets != IGNORE_INDEX
        hits += int((predictions[query] == targets[query]).sum())
        total += int(query.sum())
    model.train(was_training)
    return hits / total


@dataclass(frozen=True)
class MQARResult:
    strategy: str
    accuracy: float
    final_loss: float
    seconds: float


#: The demo's MQAR column: sized to ~20 s per strategy on 2 CPU cores. At this budget models reach
#: the "copy one of the context values" plateau (accuracy ≈ 1 / num_kv_pairs) and only start to
#: recall beyond it; ``--steps 1500 --batch-size 128`` shows recall emerging (see the module docs).
DEMO_TASK = MQARConfig(vocab_size=32, seq_len=16, num_kv_pairs=3)
DEMO_TRAIN = TrainConfig(steps=450, batch_size=64, seq_len=DEMO_TASK.seq_len, lr=3e-3, warmup=30, eval_batches=8)
#: Width and depth of the MQAR models (overrides of the ``tiny`` size; two layers suffice for recall).
DEMO_MODEL: dict[str, int] = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)


def mqar_model_config(strategy: str, task: MQARConfig = DEMO_TASK, size: str = "tiny", **overrides: Any) -> ModelConfig:
    """The ``size`` config of ``strategy`` (its default options) sized for ``task``."""
    overrides = {"vocab_size": task.vocab_size, "max_seq_len": task.seq_len, **overrides}
    return model_config(size, strategy, **overrides)


def train_mqar(
    strategy: str, task: MQARConfig = DEMO_TASK, cfg: TrainConfig = DEMO_TRAIN, size: str = "tiny",
    **overrides: Any,
) -> MQARResult:
    """Train a model running ``strategy`` on fresh MQAR batches; report held-out query accuracy.

    ``overrides`` replace fields of the ``size`` config (default :data:`DEMO_MODEL`).
    """
    model_cfg = mqar_model_config(strategy, task, size, **(overrides or DEMO_MODEL))
    torch.manual_seed(cfg.seed)
    model = CausalLM(model_cfg)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    losses = fit(model, opt, cfg, lambda: mqar_batch(task, cfg.batch_size, gen), model_mqar_loss)
    seconds = time.perf_counter() - start
    accuracy = evaluate_mqar(model, task, batches=cfg.eval_batches)
    return MQARResult(strategy, accuracy, losses[-1], seconds)


def format_mqar(results: list[MQARResult], task: MQARConfig = DEMO_TASK) -> str:
    """Accuracy and final training loss per strategy. No time column: strategies trained one after
    another see different machine load (``python -m recipes.bench`` times them interleaved)."""
    lines = [f"MQAR: vocab {task.vocab_size}, seq {task.seq_len}, {task.num_kv_pairs} kv pairs; chance "
             f"{task.chance:.3f}, any-context-value plateau {1 / task.num_kv_pairs:.3f}",
             f"{'strategy':<12}{'accuracy':>10}{'loss':>8}"]
    lines += [f"{r.strategy:<12}{r.accuracy:>10.3f}{r.final_loss:>8.3f}" for r in results]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--vocab-size", type=positive_int, default=DEMO_TASK.vocab_size)
    p.add_argument("--seq-len", type=positive_int, default=DEMO_TASK.seq_len)
    p.add_argument("--num-kv-pairs", type=positive_int, default=DEMO_TASK.num_kv_pairs)
    p.add_argument("--steps", type=positive_int, default=DEMO_TRAIN.steps)
    p.add_argument("--batch-size", type=positive_int, default=DEMO_TRAIN.batch_size)
    p.add_argument("--lr", type=positive_float, default=DEMO_TRAIN.lr)
    p.add_argument("--seed", type=non_negative_int, default=DEMO_TRAIN.seed)
    p.add_argument("--d-model", type=positive_int, default=DEMO_MODEL["d_model"])
    p.add_argument("--n-layers", type=positive_int, default=DEMO_MODEL["n_layers"])
    return p


def main(argv: list[str] | None = None) -> list[MQARResult]:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = flags_of(parser)
    with user_errors(parser, flags):
        task = MQARConfig(vocab_size=args.vocab_size, seq_len=args.seq_len, num_kv_pairs=args.num_kv_pairs)
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=task.seq_len, lr=args.lr,
                          seed=args.seed, warmup=min(DEMO_TRAIN.warmup, args.steps - 1),
                          eval_batches=DEMO_TRAIN.eval_batches)
    model = {**DEMO_MODEL, "d_model": args.d_model, "n_layers": args.n_layers}
    with user_errors(parser, flags, flag="--d-model/--n-layers"):  # e.g. d_model not divisible by n_heads
        for name in args.strategies:
            mqar_model_config(name, task, **model)
    results = [train_mqar(name, task, cfg, **model) for name in args.strategies]
    print(format_mqar(results, task))
    return results


if __name__ == "__main__":
    main()
