"""A multi-seed study: strategies × seeds × tasks, with paired differences a reader can trust.

``python -m recipes.experiments.study --preset published --workers 2`` trains every
variant (a registry strategy plus options, e.g. ``satformer-sigmoid``) on every task (``lm``:
validation loss on the embedded corpus; ``mqar``: multi-query associative recall accuracy) for
every seed. A seed fixes the initial-weight RNG and the data order, the same for every variant,
so differences to the baseline can be paired by seed (:mod:`recipes.experiments.study_report`).

Each run is a pure function of its spec (variant, seed, task, full model and training configs);
when it finishes, one JSON line is appended to ``OUT/runs.jsonl`` (flushed and fsynced). A run's
key is a hash of its spec: an interrupted study rerun with the same arguments skips the finished
runs, and a changed setting never reuses a stale result. Every run uses one thread, so results do
not depend on ``--workers`` (the number of parallel processes; use one per core).
After a study, its report covers exactly the runs of its settings; ``--report-only`` re-renders
``results.md``, ``summary.json`` and the PNGs from all of ``runs.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recipes.lm.cli import flags_of, non_negative_int, positive_int, user_errors, writable
from recipes.lm.config import ModelConfig
from recipes.experiments.study_config import LADDER_RUNGS, PRESETS, SWEEP_LRS, VARIANTS, StudyConfig, study_model_config
from recipes.experiments.study_plots import plot
from recipes.experiments.study_report import load_runs, write_report
from recipes.experiments.study_run import execute

#: Per task, bumped when what a run computes changes, so old results are not reused
#: (MQAR 2: runs record held-out accuracy along training).
STUDY_VERSION: dict[str, int] = {"lm": 1, "mqar": 2}
#: Model fields that change how a run executes, not what it computes (gradients are identical,
#: tested): left out of specs, so adding such a field never invalidates finished runs.
EXECUTION_ONLY = ("activation_checkpointing",)
#: Model fields added after runs were committed, with the value that reproduces the model those runs
#: trained: a field at that value is left out of the spec, so growing ModelConfig (a new option whose
#: default changes nothing) keeps every finished run's key. Set to anything else, it enters the key.
#: ``None`` marks a field that ``None`` derives from others (``head_dim``): it is neutral while it
#: holds the derived value.
ADDED_FIELDS: dict[str, Any] = {"layernorm_scaling": False, "peri_norm": False, "qkv_bias": False, "head_dim": None}


def _neutral(model: ModelConfig, name: str, value: Any) -> bool:
    if ADDED_FIELDS[name] is None:
        return value == getattr(replace(model, **{name: None}), name)
    return value == ADDED_FIELDS[name]


def model_spec(model: ModelConfig) -> dict[str, Any]:
    """The model part of a run's spec: every field but :data:`EXECUTION_ONLY` and the
    :data:`ADDED_FIELDS` left at their neutral values."""
    return {k: v for k, v in asdict(model).items()
            if k not in EXECUTION_ONLY and not (k in ADDED_FIELDS and _neutral(model, k, v))}


#: Where each preset writes by default: the committed results the docs and the demo read.
DEFAULT_OUT = {"published": "docs/results/study", "demo": "docs/results/demo", "smoke": "runs/study-smoke",
               **{f"sweep-lr{lr}": f"docs/results/ladder/sweep-lr{lr}" for lr in SWEEP_LRS},
               **{f"ladder-{steps}": f"docs/results/ladder/steps-{steps}" for steps in LADDER_RUNGS},
               "ladder-1000-forms": "docs/results/ladder/steps-1000"}  # shares the rung's baseline runs
#: Bumped when what the end-of-run evaluations compute changes (their results enter the run).
EVALS_VERSION = 1


def plan(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every run's spec, seed-major (an interrupted study has whole seeds first)."""
    specs = []
    for seed in cfg.seeds:
        for task_name, task in cfg.tasks.items():
            for variant in cfg.variants:
                if task_name != "lm" and variant.name in cfg.lm_only:
                    continue
                model = study_model_config(variant, task.shape or cfg.shape, task.vocab_size, task.max_seq_len)
                spec = {
                    "version": STUDY_VERSION[task_name], "task": task_name, "seed": seed,
                    "variant": {k: v for k, v in asdict(variant).items() if k != "model" or v},
                    "model": model_spec(model), "train": {**asdict(task.train), "seed": seed},
                    "mqar": asdict(task.mqar) if task.mqar else None, "corpus_bytes": task.corpus_bytes,
                    # the embedded corpus is this Python's standard library
                    "python": None if task.mqar else "%d.%d" % sys.version_info[:2],
                    "curve_points": cfg.curve_points,
                }
                if task.evals:  # absent when none: the keys of runs from before evals existed stay
                    spec["evals"] = {"names": list(task.evals), "version": EVALS_VERSION}
                specs.append(spec)
    return specs


def spec_key(spec: dict[str, Any]) -> str:
    """A stable hash of the whole spec (any changed setting gives a new key)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def run_one(spec: dict[str, Any], partial: str | Path | None = None, every: int = 0) -> dict[str, Any]:
    """Train and evaluate the run ``spec`` describes (single-threaded; see :func:`execute`, which
    checkpoints to and resumes from ``partial`` every ``every`` steps)."""
    return {"key": spec_key(spec), **execute(spec, partial, every), "finished_at": time.time(), "spec": spec}


def partial_path(out: str | Path, spec: dict[str, Any]) -> Path:
    """The directory where the unfinished run ``spec`` of the study in ``out`` keeps its checkpoint."""
    return Path(out) / "partial" / spec_key(spec)


def _execute(specs: list[dict[str, Any]], workers: int, out: Path, every: int) -> Iterator[dict[str, Any]]:
    """Results of ``specs`` as they finish: in this process, or in ``workers`` spawned processes."""
    if workers == 1:
        for spec in specs:
            yield run_one(spec, partial_path(out, spec), every)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, spec, partial_path(out, spec), every) for spec in specs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # on an error or interrupt, start no further run (finished ones are on disk)
            pool.shutdown(wait=False, cancel_futures=True)


def _drop_torn_line(path: Path) -> None:
    """Cut a partial last line (a process killed mid-write) so appends start on a fresh line."""
    data = path.read_bytes() if path.exists() else b""
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


#: Default checkpoint interval of a study's runs, in steps (a 4000-step ladder run saves 15 times: not at its end).
CHECKPOINT_EVERY = 250


def run_study(cfg: StudyConfig, out: str | Path, workers: int = 1, progress: bool = True,
              checkpoint_every: int = CHECKPOINT_EVERY) -> list[dict[str, Any]]:
    """Run the study's unfinished runs (``workers`` processes); return all of its finished runs.

    Each unfinished run checkpoints to ``out/partial/KEY/`` every ``checkpoint_every`` steps
    (0: never) and resumes from there, so an interrupted study loses at most that many steps per
    run in progress; the file goes once the run's line is on disk."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {checkpoint_every}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    _drop_torn_line(path)
    specs = plan(cfg)
    done = {run["key"] for run in load_runs(path)}
    todo = [spec for spec in specs if spec_key(spec) not in done]
    for spec in specs:  # a run stored just before the process died may have left its checkpoint
        if spec_key(spec) in done:
            shutil.rmtree(partial_path(out, spec), ignore_errors=True)
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="runs", disable=not progress, unit="run")
    with open(path, "a") as f:
        for result in _execute(todo, workers, out, checkpoint_every):
            f.write(json.dumps(result) + "\n")
            f.flush()
            os.fsync(f.fileno())
            shutil.rmtree(partial_path(out, result["spec"]), ignore_errors=True)
            bar.update()
            bar.set_postfix_str(f"{result['spec']['variant']['name']} seed {result['spec']['seed']}", refresh=False)
    bar.close()
    keys = {spec_key(spec) for spec in specs}
    return [run for run in load_runs(path) if run["key"] in keys]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="published", choices=list(PRESETS), help="the study's settings")
    p.add_argument("--out", type=writable("directory"), help="directory for runs.jsonl, results.md, summary.json, PNGs (default: "
                                 + ", ".join(f"{k}: {v}" for k, v in DEFAULT_OUT.items()) + ")")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes (one per core)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", help="override the preset's seeds")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                   help=f"override the preset's variants; known: {', '.join(VARIANTS)}")
    p.add_argument("--tasks", nargs="+", choices=("lm", "mqar"), help="override the preset's tasks")
    p.add_argument("--report-only", action="store_true", help="re-render the report from OUT/runs.jsonl")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=CHECKPOINT_EVERY, metavar="STEPS",
                   help="save each run in progress to OUT/partial every STEPS steps and resume from there "
                        f"(0: never; default {CHECKPOINT_EVERY})")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out or DEFAULT_OUT[args.preset])
    if args.report_only and not load_runs(out / "runs.jsonl"):
        parser.error(f"--out: no finished runs in {out / 'runs.jsonl'} to report (--report-only)")
    if not args.report_only:
        with user_errors(parser, flags_of(parser)):  # e.g. repeated --seeds, a --tasks the preset lacks
            cfg = PRESETS[args.preset]().override(seeds=args.seeds, variants=args.variants, tasks=args.tasks)
        print(f"study {args.preset}: {len(cfg.variants)} variants × {len(cfg.seeds)} seeds × tasks {list(cfg.tasks)}"
              f" -> {out / 'runs.jsonl'}", file=sys.stderr)
        runs = run_study(cfg, out, args.workers, checkpoint_every=args.checkpoint_every)
    summary = write_report(out, runs=None if args.report_only else runs)
    if not args.no_plots:
        plot(summary, load_runs(out / "runs.jsonl") if args.report_only else runs, out)
    print((out / "results.md").read_text())
    return summary


if __name__ == "__main__":
    main()
