"""The main demo: train the tiny SATFormer and baselines on the embedded corpus, compare them.

``python -m recipes.experiments.demo`` (what ``bash scripts/demo.sh`` runs) trains every registered strategy at the ``tiny`` size with the
same seed, data order and optimiser, then prints validation loss per strategy and, unless
``--no-mqar``, the accuracy of a small model of each strategy on multi-query associative recall
(:mod:`recipes.eval.mqar`, ~20 s per strategy).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from recipes.builders import BUILDERS, SIZES
from recipes.config import ModelConfig
from recipes.data import embedded_corpus, random_batch
from recipes.eval.mqar import DEMO_TASK, DEMO_TRAIN, format_mqar, train_mqar
from recipes.model import CausalLM
from recipes.train.optim import TrainConfig, lm_loss, make_optimizer, train_step
from value_routing.strategies import STRATEGIES


@dataclass(frozen=True)
class RunResult:
    strategy: str
    params: int
    val_loss: float
    seconds: float
    tokens_per_s: float


@torch.no_grad()
def evaluate(model: CausalLM, val: torch.Tensor, cfg: TrainConfig) -> float:
    """Mean loss over ``eval_batches`` fixed validation windows (same for every strategy)."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    losses = [lm_loss(model, *random_batch(val, cfg.batch_size, cfg.seq_len, gen)).item() for _ in range(cfg.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


def train_one(model_cfg: ModelConfig, cfg: TrainConfig, train: torch.Tensor, val: torch.Tensor) -> RunResult:
    torch.manual_seed(cfg.seed)
    model = CausalLM(model_cfg)
    step_fn = torch.compile(lm_loss) if cfg.compile else lm_loss
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"{model_cfg.strategy:>10}", leave=False, mininterval=1.0)
    for step in bar:
        loss = train_step(model, opt, step, cfg, random_batch(train, cfg.batch_size, cfg.seq_len, gen), step_fn)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.perf_counter() - start
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    return RunResult(model_cfg.strategy, model.num_params(), evaluate(model, val, cfg), seconds, tokens / seconds)


def format_table(results: list[RunResult], mqar: dict[str, float] | None = None) -> str:
    """The demo's table; ``mqar`` maps strategies to MQAR accuracy (a column when given)."""
    base = next((r.val_loss for r in results if r.strategy == "baseline"), None)
    lines = [f"{'strategy':<12}{'params':>10}{'val loss':>10}{'bits/byte':>11}{'Δ vs base':>11}{'tok/s':>9}"
             + (f"{'MQAR acc':>10}" if mqar else "")]
    for r in results:
        delta = f"{r.val_loss - base:+.4f}" if base is not None else "-"
        lines.append(
            f"{r.strategy:<12}{r.params / 1e6:>9.2f}M{r.val_loss:>10.4f}{r.val_loss / math.log(2):>11.4f}"
            f"{delta:>11}{r.tokens_per_s:>9.0f}" + (f"{mqar[r.strategy]:>10.3f}" if mqar else "")
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(BUILDERS), choices=list(STRATEGIES))
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seq-len", type=int, default=TrainConfig.seq_len)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--no-mqar", action="store_true", help="skip the MQAR recall column (recipes.eval.mqar)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[RunResult]:
    args = parse_args(argv)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      seed=args.seed, compile=args.compile, warmup=min(TrainConfig.warmup, args.steps - 1))
    train, val = embedded_corpus()
    print(f"corpus: {len(train):,} train / {len(val):,} val bytes of Python stdlib source; "
          f"{cfg.steps} steps × {cfg.batch_size}×{cfg.seq_len} tokens, size={args.size}")
    results = []
    for name in tqdm(args.strategies, desc="strategies"):
        results.append(train_one(BUILDERS[name](args.size), cfg, train, val))
    mqar = None
    if not args.no_mqar:
        mqar_cfg = replace(DEMO_TRAIN, seed=args.seed)
        runs = [train_mqar(name, DEMO_TASK, mqar_cfg) for name in tqdm(args.strategies, desc="MQAR")]
        print(format_mqar(runs, DEMO_TASK))
        mqar = {r.strategy: r.accuracy for r in runs}
    print(format_table(results, mqar))
    return results


if __name__ == "__main__":
    main()
