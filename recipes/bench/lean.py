"""Peak memory and step time of the memory-lean train step, as ratios to the plain one, in one run.

``python -m recipes.bench.lean [--size small] [--seq-lens 2048 4096] [--rounds 3] [--quick] [--out DIR]``

Three train steps on the same batch (batch 1 by default) from the same initial weights:

``plain``
    full ``(batch, seq, vocab)`` logits and cross-entropy (:func:`recipes.train.loss.lm_loss`);
``chunked``
    the LM head fused into the loss in token chunks (:func:`recipes.train.loss.chunked_lm_loss`);
``chunked+ckpt``
    that, plus per-block activation checkpointing (``ModelConfig.activation_checkpointing``).

Step times are timed interleaved (:func:`recipes.bench.measure.time_interleaved`: every round runs
each variant, the start rotating) and reported as the median over rounds of the per-round ratio to
``plain``, with half the inter-quartile range as spread. Memory is the highest net allocation during
one step with gradients set to ``None`` first (:func:`recipes.bench.measure.peak_call_bytes`); its
``activations`` column subtracts the gradients (one parameter-sized set), which every variant
allocates alike. Targets (issue 13): ``chunked`` saves >= 0.5 GB at seq 4096 for <= 5 % more time;
``chunked+ckpt`` cuts ``chunked``'s activations by >= 60 %. Results go to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from recipes.bench.measure import peak_call_bytes, round_ratio, time_interleaved
from recipes.bench.report import describe_machine, write_results
from recipes.lm.builders import SIZES, model_config
from recipes.lm.cli import positive_int, writable
from recipes.lm.model import CausalLM
from recipes.train.loop import TrainConfig
from recipes.train.loss import chunked_lm_loss, lm_loss
from recipes.train.optim import make_optimizer
from value_routing.strategies import STRATEGIES

#: ``label -> (loss function, activation checkpointing)``; ``plain`` first (the ratios' base).
VARIANTS = {"plain": (lm_loss, False), "chunked": (chunked_lm_loss, False), "chunked+ckpt": (chunked_lm_loss, True)}


class LeanRunner:
    """One variant's model, optimizer and batch; :meth:`step` runs a train step."""

    def __init__(self, label: str, size: str, strategy: str, seq_len: int, batch: tuple[torch.Tensor, torch.Tensor],
                 n_layers: int | None = None) -> None:
        self.label, self.device = label, torch.device("cpu")
        self.loss_fn, ckpt = VARIANTS[label]
        overrides: dict[str, Any] = {"max_seq_len": max(seq_len, SIZES[size].get("max_seq_len", 0))}
        if n_layers is not None:
            overrides["n_layers"] = n_layers
        cfg = replace(model_config(size, strategy, **overrides), activation_checkpointing=ckpt)
        torch.manual_seed(0)
        self.model = CausalLM(cfg).train()
        self.opt = make_optimizer(self.model, TrainConfig())
        self.x, self.y = batch

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.model, self.x, self.y).backward()
        self.opt.step()

    def grad_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def measure_seq(size: str, strategy: str, seq_len: int, batch: int, rounds: int, n_layers: int | None = None):
    """Rows (one per variant) at one sequence length: time and memory, absolute and relative to plain."""
    vocab = model_config(size, strategy).vocab_size
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    data = (tokens[:, :-1], tokens[:, 1:])
    runners = [LeanRunner(label, size, strategy, seq_len, data, n_layers) for label in VARIANTS]
    for runner in runners:  # warm-up: AdamW state exists before anything is measured
        runner.step()
    times = time_interleaved(runners, rounds, 1)
    rows = []
    for runner in runners:
        runner.opt.zero_grad(set_to_none=True)
        peak = peak_call_bytes(runner.step, runner.device)
        rel, spread = round_ratio(times[runner.label], times["plain"], 0)
        rows.append({"seq_len": seq_len, "variant": runner.label, "rel_time": rel, "spread": spread,
                     "ms_per_step": 1e3 * statistics.median(s[0] for t in times[runner.label] for s in t),
                     "peak_bytes": peak, "activation_bytes": peak - runner.grad_bytes()})
    base = rows[0]
    for row in rows:
        row["rel_memory"] = row["peak_bytes"] / base["peak_bytes"]
        row["saved_gb"] = (base["peak_bytes"] - row["peak_bytes"]) / 1e9
    rows[2]["activation_cut_vs_chunked"] = 1 - rows[2]["activation_bytes"] / rows[1]["activation_bytes"]
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| seq | variant | ms/step | time vs plain | peak step MB | memory vs plain | saved GB | activations MB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seq_len']} | {r['variant']} | {r['ms_per_step']:.0f} | {r['rel_time']:.3f} ± "
                     f"{r['spread']:.3f} | {r['peak_bytes'] / 2**20:.0f} | {r['rel_memory']:.3f} | "
                     f"{r['saved_gb']:.2f} | {r['activation_bytes'] / 2**20:.0f} |")
    cuts = [f"seq {r['seq_len']}: {100 * r['activation_cut_vs_chunked']:.0f} %" for r in rows if "activation_cut_vs_chunked" in r]
    return "\n".join(lines) + "\ncheckpointing cuts chunked's activations by " + ", ".join(cuts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=list(SIZES))
    p.add_argument("--strategy", default="satformer", choices=list(STRATEGIES))
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[2048, 4096])
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny size, 2 layers, seq 32/64, 2 rounds")
    p.add_argument("--out", type=writable("directory"), default="runs/bench_lean")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size, seqs, rounds, layers = ("tiny", [32, 64], 2, 2) if args.quick else (args.size, args.seq_lens, args.rounds, None)
    machine = describe_machine("cpu", args.threads)
    print(f"{machine}\n{size}/{args.strategy} batch {args.batch}, seq {seqs}, {rounds} rounds", flush=True)
    t0, rows = time.perf_counter(), []
    for seq in seqs:
        rows += measure_seq(size, args.strategy, seq, args.batch, rounds, layers)
        print(f"  seq {seq} done after {time.perf_counter() - t0:.0f} s", flush=True)
    config = {"size": size, "strategy": args.strategy, "batch": args.batch, "seq_lens": seqs, "rounds": rounds,
              "threads": args.threads}
    report = write_results(args.out, machine, config, time.perf_counter() - t0, rows)
    print(format_rows(rows), flush=True)
    return report


if __name__ == "__main__":
    main()
