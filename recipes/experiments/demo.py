"""The main demo: train the tiny SATFormer and baselines on the embedded corpus, compare them.

``python -m recipes.experiments.demo`` (what ``bash scripts/demo.sh`` runs) trains the SATFormer paper's six strategies (``--strategies`` takes any registered one) at the ``tiny`` size with the
same seed, data order and optimiser, then prints validation loss per strategy and, unless
``--no-mqar``, the accuracy of a small model of each strategy on multi-query associative recall
(:mod:`recipes.eval.mqar`, ~20 s per strategy).

One seed is one sample: next to it the table shows, when the committed study of the demo's exact
settings (:data:`NOISE_FILE`, ``python -m recipes.experiments.study --preset demo``) matches the
run, the paired difference to the baseline over its seeds with a 95% interval, and the single-seed
spread. The demo times nothing (strategies trained one after another would each see different
machine load); ``python -m recipes.bench`` measures step cost interleaved with the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from recipes.lm.builders import SIZES, model_config
from recipes.lm.cli import flags_of, non_negative_int, positive_float, positive_int, user_errors
from recipes.lm.config import ModelConfig
from recipes.data import embedded_corpus, random_batch
from recipes.eval.mqar import DEMO_MODEL, DEMO_TASK, DEMO_TRAIN, format_mqar, mqar_model_config, train_mqar
from recipes.lm.model import CausalLM
from recipes.train.loop import TrainConfig, fit
from recipes.train.loss import lm_loss
from recipes.train.optim import make_optimizer
from recipes.experiments.study_config import PAPER_STRATEGIES
from value_routing.strategies import STRATEGIES


@dataclass(frozen=True)
class RunResult:
    strategy: str
    params: int
    val_loss: float
    seconds: float


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
    fit(model, opt, cfg, lambda: random_batch(train, cfg.batch_size, cfg.seq_len, gen), step_fn,
        desc=f"{model_cfg.strategy:>10}")
    seconds = time.perf_counter() - start
    return RunResult(model_cfg.strategy, model.num_params(), evaluate(model, val, cfg), seconds)


#: The demo preset of the multi-seed study (docs/results.md), committed: the noise at the demo's budget.
NOISE_FILE = Path(__file__).resolve().parents[2] / "docs" / "results" / "demo" / "summary.json"
_BUDGET_KEYS = ("steps", "batch_size", "seq_len", "lr", "warmup")
_SHAPE_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "qk_norm", "vocab_size")


def study_noise(task: str, cfg: TrainConfig, model_cfg: ModelConfig, path: Path = NOISE_FILE) -> dict[str, Any] | None:
    """The study's per-strategy results for ``task`` if they were measured at exactly this budget."""
    try:
        entry = json.loads(path.read_text())[task]
    except (OSError, KeyError, ValueError):
        return None
    budget = entry["budget"]
    same = all(budget[k] == getattr(cfg, k) for k in _BUDGET_KEYS) and all(
        budget[k] == getattr(model_cfg, k) for k in _SHAPE_KEYS)
    return entry["variants"] if same else None


def _ci(est: dict[str, Any] | None, signed: bool = True) -> str:
    if est is None or est["half_width"] is None:
        return "-"
    return f"{est['mean']:+.3f}±{est['half_width']:.3f}" if signed else f"{est['mean']:.2f}±{est['half_width']:.2f}"


def format_table(results: list[RunResult], mqar: dict[str, float] | None = None,
                 noise: dict[str, Any] | None = None, mqar_noise: dict[str, Any] | None = None) -> str:
    """The demo's table; ``mqar`` maps strategies to MQAR accuracy; ``noise`` / ``mqar_noise`` are
    :func:`study_noise` results (multi-seed columns when given)."""
    base = next((r.val_loss for r in results if r.strategy == "baseline"), None)
    seeds = lambda rows: len(next(iter(rows.values()))["seeds"])  # noqa: E731
    lines = [f"{'strategy':<12}{'params':>10}{'val loss':>10}{'bits/byte':>11}{'Δ vs base':>11}"
             + (f"{f'Δ {seeds(noise)} seeds':>16}" if noise else "") + (f"{'MQAR acc':>10}" if mqar else "")
             + (f"{f'MQAR {seeds(mqar_noise)} seeds':>14}" if mqar and mqar_noise else "")]
    for r in results:
        delta = f"{r.val_loss - base:+.4f}" if base is not None else "-"
        line = f"{r.strategy:<12}{r.params / 1e6:>9.2f}M{r.val_loss:>10.4f}{r.val_loss / math.log(2):>11.4f}{delta:>11}"
        if noise:
            line += f"{_ci(noise.get(r.strategy, {}).get('delta')):>16}"
        if mqar:
            line += f"{mqar[r.strategy]:>10.3f}"
            if mqar_noise:
                line += f"{_ci(mqar_noise.get(r.strategy, {}).get('estimate'), signed=False):>14}"
        lines.append(line)
    return "\n".join(lines)


def noise_note(noise: dict[str, Any] | None) -> str:
    """What the reader should make of a single seed's Δ, with the measured spread when known."""
    study = "`python -m recipes.experiments.study --preset demo`; the multi-seed study: docs/results.md"
    if not noise:
        return (f"Δ vs base is one seed; the noise at these settings is not measured in this checkout "
                f"({study}).\nStep cost: `python -m recipes.bench` (timed interleaved with the baseline).")
    sds = [row["delta"]["sd"] for row in noise.values() if row["delta"] and row["delta"]["sd"] is not None]
    spread = math.sqrt(sum(sd * sd for sd in sds) / len(sds)) if sds else float("nan")
    return (f"Δ vs base is one seed: at this budget one seed's Δ has SD ≈ {spread:.3f} (paired, pooled over "
            f"strategies); 'Δ N seeds' is the mean paired Δ ± 95% CI ({study}).\n"
            "Step cost: `python -m recipes.bench` (timed interleaved with the baseline).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(PAPER_STRATEGIES), choices=list(STRATEGIES),
                   help="registered strategies to train (default: the SATFormer paper's six)")
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--steps", type=positive_int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    p.add_argument("--seq-len", type=positive_int, default=TrainConfig.seq_len)
    p.add_argument("--lr", type=positive_float, default=TrainConfig.lr)
    p.add_argument("--seed", type=non_negative_int, default=TrainConfig.seed)
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--no-mqar", action="store_true", help="skip the MQAR recall column (recipes.eval.mqar)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def demo_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The training config of the parsed arguments; a bad one is ``parser.error`` naming the flag."""
    with user_errors(parser, flags_of(parser)):
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                          seed=args.seed, compile=args.compile, warmup=min(TrainConfig.warmup, args.steps - 1))
    with user_errors(parser, flags_of(parser)):
        for name in args.strategies:  # the model must fit the sequence (max_seq_len)
            model = model_config(args.size, name)
            if cfg.seq_len > model.max_seq_len:
                raise ValueError(f"seq_len must be <= max_seq_len = {model.max_seq_len} of size {args.size!r}, "
                                 f"got {cfg.seq_len}")
    return cfg


def main(argv: list[str] | None = None) -> list[RunResult]:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = demo_config(parser, args)
    train, val = embedded_corpus()
    print(f"corpus: {len(train):,} train / {len(val):,} val bytes of Python stdlib source; "
          f"{cfg.steps} steps × {cfg.batch_size}×{cfg.seq_len} tokens, size={args.size}")
    results = []
    for name in tqdm(args.strategies, desc="strategies"):
        results.append(train_one(model_config(args.size, name), cfg, train, val))
    mqar = mqar_noise = None
    if not args.no_mqar:
        mqar_cfg = replace(DEMO_TRAIN, seed=args.seed)
        runs = [train_mqar(name, DEMO_TASK, mqar_cfg) for name in tqdm(args.strategies, desc="MQAR")]
        print(format_mqar(runs, DEMO_TASK))
        mqar = {r.strategy: r.accuracy for r in runs}
        mqar_noise = study_noise("mqar", mqar_cfg, mqar_model_config("baseline", DEMO_TASK, **DEMO_MODEL))
    noise = study_noise("lm", cfg, model_config(args.size, "baseline"))
    print(format_table(results, mqar, noise, mqar_noise))
    print(noise_note(noise))
    return results

if __name__ == "__main__":
    main()
