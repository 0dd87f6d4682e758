"""Train-step cost of every reuse strategy relative to the baseline Transformer, in one run.

``python -m recipes.bench [--device cpu|cuda] [--compile/--no-compile] [--quick] [--out DIR]``

Every registered strategy (and both storages, ``buffer`` and ``stack``, of those taking an
``impl`` option) trains on the *same* batch from the same initial weights. A train step is
``zero_grad → forward + cross-entropy → backward → AdamW step``. Method:

* all models are built and warmed up first (compilation plus a few steps), then timed
  **interleaved**: each round runs a few steps of every variant, the start rotating by one
  variant per round, so slow drifts of the machine hit all variants alike;
* a variant's step time is the median of its per-step times; its ratio to the baseline is
  the median over rounds of ``median(variant steps) / median(baseline steps)`` in that round;
  the ``spread`` column is half the inter-quartile range of those per-round ratios;
* CPU steps are timed with ``perf_counter`` (garbage collector off), CUDA steps with CUDA
  events; torch runs with ``--threads`` intra-op threads (default 2). On Linux the user-space
  cycles and instructions of every step are read from hardware counters too
  (:mod:`recipes.bench.counters`): their ratios do not move when other processes share the
  cores, a cross-check of the wall-time ratio on a busy machine;
* peak memory is ``persistent + step peak``: ``persistent`` sums the parameters, buffers and
  AdamW state; ``step peak`` is the highest net allocation during one extra step (gradients
  set to ``None`` before it): ``torch.cuda.max_memory_allocated`` minus the allocation before
  the step on CUDA, and on CPU the allocator's running total recorded by
  ``torch.profiler(profile_memory=True)`` (every CPU tensor allocation, eager or
  inductor-generated, is reported there).

Besides the main table (``--seq-len``, ``--layers``), a sweep over sequence length and over
depth shows how the relative cost grows (eager by default; ``--sweep-compile`` adds compiled).
Results go to ``--out`` as ``results.json``, ``tables.md`` and ``bench_<device>.png``.
:mod:`recipes.bench.depth` measures the dense strategies' routing alone (buffer vs stack).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from typing import Any

import torch

from recipes.bench.counters import process_counters
from recipes.bench.measure import BenchConfig, Variant, discover_variants, measure
from recipes.lm.builders import SIZES
from recipes.lm.cli import flags_of, int_at_least, positive_int, user_errors, writable


def sweep(
    variants: list[Variant], bench: BenchConfig, modes: list[str], seq_lens: list[int], depths: list[int]
) -> list[dict[str, Any]]:
    """Relative cost over sequence length (depth fixed) and over depth (sequence length fixed)."""
    depth = bench.n_layers or SIZES[bench.size]["n_layers"]
    points = [("seq_len", s, replace(bench, seq_len=s, n_layers=depth)) for s in seq_lens]
    points += [("depth", d, replace(bench, n_layers=d)) for d in depths]
    rows = []
    for axis, value, cfg in points:
        for mode in modes:
            rows += [{"axis": axis, "value": value, **r.__dict__} for r in measure(variants, cfg, mode)]
            print(f"  sweep {axis}={value} {mode} done", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure torch.compile'd steps (default: on, off with --quick)")
    p.add_argument("--sweep-compile", action="store_true", help="also compile in the sweep (slow on CPU)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: small shapes, few rounds")
    p.add_argument("--out", type=writable("directory"), default="runs/bench")
    p.add_argument("--strategies", nargs="+", default=None, help="variant labels (default: all registered)")
    p.add_argument("--size", default=None, choices=list(SIZES), help="default: tiny on CPU, small on CUDA")
    p.add_argument("--batch", type=positive_int, default=None)
    p.add_argument("--seq-len", type=positive_int, default=None)
    p.add_argument("--layers", type=int_at_least(2), default=None)
    p.add_argument("--rounds", type=positive_int, default=None)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--sweep-seq", type=positive_int, nargs="*", default=None)
    p.add_argument("--sweep-depth", type=int_at_least(2), nargs="*", default=None)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


#: Defaults per device: ``(size, batch, seq_len, rounds, sweep seq lens, sweep depths)``.
DEFAULTS = {
    "cpu": ("tiny", 8, 128, 7, [64, 128, 256, 512], [2, 4, 8, 16]),
    "cuda": ("small", 16, 1024, 15, [256, 512, 1024, 2048], [4, 8, 16]),
    "quick": ("tiny", 2, 32, 2, [16, 32], [2, 3]),
}


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The main measurement's config from the CLI arguments and the device's defaults (for those unset: None)."""
    size, batch, seq, rounds, _, _ = DEFAULTS["quick" if args.quick else args.device]
    return BenchConfig(
        args.device, _given(args.size, size), _given(args.batch, batch), _given(args.seq_len, seq),
        _given(args.layers, 2 if args.quick else None), warmup=1 if args.quick else 3,
        rounds=_given(args.rounds, rounds), steps=1 if args.quick else 3, amp=args.device == "cuda",
    )


def sweep_config(bench: BenchConfig, quick: bool) -> BenchConfig:
    """The sweep measures each point on half the batch, with fewer rounds and steps than the main table."""
    if quick:
        return replace(bench, warmup=1, rounds=max(2, bench.rounds // 2), steps=1)
    return replace(bench, batch=max(1, bench.batch // 2), warmup=2, rounds=max(2, bench.rounds - 2), steps=2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from recipes.bench.report import describe_machine, format_sweep, format_table, plot_sweep, write_outputs

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but torch.cuda.is_available() is False; use --device cpu")
    with user_errors(parser, flags_of(parser) | {"n_layers": "--layers"}):
        bench = bench_config(args)
        variants = discover_variants(args.strategies)
    process_counters()  # before torch starts its thread pool, so its threads are counted
    torch.set_num_threads(args.threads)
    compile_ = not args.quick if args.compile is None else args.compile
    modes = ["eager", "compiled"] if compile_ else ["eager"]
    *_, default_seqs, default_depths = DEFAULTS["quick" if args.quick else args.device]
    seqs = default_seqs if args.sweep_seq is None else args.sweep_seq
    depths = default_depths if args.sweep_depth is None else args.sweep_depth
    machine = describe_machine(bench.device, args.threads)
    print(f"{machine}\nconfig: {bench}\nvariants: {[v.label for v in variants]}", flush=True)
    t0 = time.perf_counter()
    main_results = []
    for mode in modes:
        t_mode = time.perf_counter()
        main_results += measure(variants, bench, mode)
        print(f"  main {mode} done in {time.perf_counter() - t_mode:.0f} s", flush=True)
    print(format_table(main_results), flush=True)
    sweep_modes = modes if args.sweep_compile else ["eager"]
    sweep_rows = sweep(variants, sweep_config(bench, args.quick), sweep_modes, seqs, depths)
    report = {"machine": machine, "config": bench.__dict__, "loadavg_end": os.getloadavg(),
              "seconds": time.perf_counter() - t0, "main": [r.__dict__ for r in main_results], "sweep": sweep_rows}
    write_outputs(report, args.out)
    plot_sweep(sweep_rows, os.path.join(args.out, f"bench_{bench.device}.png"), title=machine)
    print(format_sweep(sweep_rows), f"\nwrote {args.out}/ in {report['seconds']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
