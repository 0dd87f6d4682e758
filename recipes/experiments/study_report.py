r"""Statistics, tables and plots of a study (:mod:`recipes.experiments.study`), from its ``runs.jsonl`` alone.

Over the seeds :math:`s = 1..n` of a variant with metric :math:`x_s` (validation loss, or MQAR
accuracy), the report gives the mean and a Student-t 95% confidence interval

.. math:: \bar x \pm t_{0.975,\,n-1}\, \frac{s_x}{\sqrt n}, \qquad
          s_x^2 = \frac{1}{n-1}\sum_s (x_s - \bar x)^2

and the **paired** difference to the baseline run of the same seed (same seed for the initial
weights, same data order), :math:`d_s = x_s - b_s`, with the same interval
on :math:`d`. Pairing removes the seed-to-seed spread both runs share, so a paired interval is
usually much narrower than the two unpaired ones. With :math:`n = 1` no interval exists ("n/a").
MQAR runs also report the solve rate: the fraction of seeds with accuracy
:math:`\ge` :data:`SOLVED`. Recall appears abruptly, so a run's final accuracy is close to
all-or-nothing; *when* it appears is graded. Runs that record their held-out ``accuracy_curve``
(accuracy :math:`a_1..a_K` at :math:`K` equally spaced steps) also report the mean accuracy over
training, :math:`\bar a = \frac1K \sum_k a_k` (the area under the accuracy curve, 1 for a run
that recalls from the first evaluation, the plateau value for one that never does), with its mean
± CI and paired Δ like the final metric, and per seed the first evaluated step with
:math:`a_k \ge` :data:`SOLVED`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from recipes.experiments.study_config import VARIANTS

#: MQAR accuracy at or above which a run counts as having solved the task.
SOLVED = 0.9
#: t_{0.975, df} for df = 1..30 (two-sided 95%); larger df use a Cornish-Fisher expansion.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
         2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
         2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
         2.048407, 2.045230, 2.042272)
#: Per task: the run's metric key, its label, and which direction is better.
METRIC = {"lm": ("val_loss", "val loss", "lower is better"), "mqar": ("accuracy", "MQAR accuracy", "higher is better")}


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963985  # error of this expansion < 1e-4 for df > 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values, their sample standard deviation and the half-width of the mean's 95%
    t-interval (both ``None`` when n = 1)."""

    mean: float
    half_width: float | None
    n: int
    sd: float | None = None


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean and Student-t 95% interval half-width of ``values`` (see the module docstring)."""
    n = len(values)
    if n == 0:
        raise ValueError("values must not be empty")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t975(n - 1) * sd / math.sqrt(n), n, sd)


def paired_delta(values: dict[int, float], base: dict[int, float]) -> Estimate | None:
    """Mean ± CI of ``values[s] - base[s]`` over the seeds both have; ``None`` if they share none."""
    seeds = sorted(set(values) & set(base))
    return mean_ci([values[s] - base[s] for s in seeds]) if seeds else None


def load_runs(path: str | Path) -> list[dict[str, Any]]:
    """The finished runs in a ``runs.jsonl``; a torn last line (a run killed mid-write) is skipped."""
    runs, lines = [], Path(path).read_text().splitlines() if Path(path).exists() else []
    for i, line in enumerate(lines):
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1} is not valid JSON (only the last line may be torn)") from None
    return runs


def budget(spec: dict[str, Any]) -> dict[str, Any]:
    """The settings a reader needs to compare runs: training budget, model shape, MQAR task."""
    m, t = spec["model"], spec["train"]
    out = {k: t[k] for k in ("steps", "batch_size", "seq_len", "lr", "warmup")}
    out.update({k: m[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "qk_norm", "vocab_size")})
    if spec.get("mqar"):
        out.update({f"mqar_{k}": v for k, v in spec["mqar"].items()})
    return out


def accuracy_auc(run: dict[str, Any]) -> float | None:
    """Mean held-out accuracy over a run's ``accuracy_curve`` (``None`` if it has none)."""
    curve = run.get("accuracy_curve")
    return sum(a for _, a in curve) / len(curve) if curve else None


def steps_to_solve(run: dict[str, Any]) -> int | None:
    """First step of the ``accuracy_curve`` with accuracy >= :data:`SOLVED` (``None``: never)."""
    return next((int(step) for step, a in run.get("accuracy_curve") or () if a >= SOLVED), None)


def _learning_speed(seeds: dict[int, dict[str, Any]], base_auc: dict[int, float] | None) -> dict[str, Any]:
    """Accuracy-curve statistics of one variant's runs (empty if any run lacks a curve); the paired
    Δ to ``base_auc`` (the baseline's, ``None`` for the baseline itself)."""
    aucs = {s: accuracy_auc(r) for s, r in sorted(seeds.items())}
    if any(a is None for a in aucs.values()):
        return {}
    values = {s: float(a) for s, a in aucs.items() if a is not None}
    delta = paired_delta(values, base_auc) if base_auc is not None else None
    return {"auc": mean_ci(list(values.values())).__dict__, "auc_values": list(values.values()),
            "auc_delta": None if delta is None else delta.__dict__,
            "steps_to_solve": [steps_to_solve(r) for _, r in sorted(seeds.items())]}


def _row_order(name: str, baseline: str) -> tuple[int, int, str]:
    """Baseline first, then the registry's order of variants (not the order runs finished in)."""
    known = list(VARIANTS)
    return (name != baseline, known.index(name) if name in known else len(known), name)


def summarize(runs: Iterable[dict[str, Any]], baseline: str = "baseline") -> dict[str, Any]:
    """Per task: the ``budget`` (of the first run) and per variant the metric's estimate, the paired
    Δ vs ``baseline``, the MQAR solve rate, seeds, parameters and mean training seconds."""
    by: dict[str, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        spec = run["spec"]
        cell = by[spec["task"]][spec["variant"]["name"]]
        if spec["seed"] in cell and cell[spec["seed"]]["spec"] != spec:
            raise ValueError(f"runs of different settings for {spec['task']} / {spec['variant']['name']} / seed "
                             f"{spec['seed']}: the results file mixes studies; use a fresh --out per setting")
        cell[spec["seed"]] = run
    out: dict[str, Any] = {}
    for task, variants in by.items():
        variants = {name: variants[name] for name in sorted(variants, key=lambda n: _row_order(n, baseline))}
        key = METRIC[task][0]
        base = {s: r[key] for s, r in variants.get(baseline, {}).items()}
        base_auc = {s: auc for s, r in variants.get(baseline, {}).items() if (auc := accuracy_auc(r)) is not None}
        rows = {}
        for name, seeds in variants.items():
            values = {s: r[key] for s, r in sorted(seeds.items())}
            delta = paired_delta(values, base) if name != baseline else None
            rows[name] = {
                "seeds": sorted(values), "values": list(values.values()),
                "estimate": mean_ci(list(values.values())).__dict__,
                "delta": None if delta is None else delta.__dict__,
                "params": next(iter(seeds.values()))["params"],
                "seconds": sum(r["seconds"] for r in seeds.values()) / len(seeds),
            }
            if task == "mqar":
                rows[name]["solve_rate"] = sum(v >= SOLVED for v in values.values()) / len(values)
                rows[name].update(_learning_speed(seeds, base_auc if name != baseline else None))
        first = next(iter(next(iter(variants.values())).values()))
        out[task] = {"budget": budget(first["spec"]), "variants": rows}
    return out


def _fmt(est: dict[str, Any] | None, digits: int = 4, signed: bool = False) -> str:
    if est is None:
        return "-"
    mean = f"{est['mean']:+.{digits}f}" if signed else f"{est['mean']:.{digits}f}"
    pm = "n/a" if est["half_width"] is None else f"{est['half_width']:.{digits}f}"
    return f"{mean} ± {pm}"


def format_markdown(summary: dict[str, Any], baseline: str = "baseline") -> str:
    """Markdown tables (one per task) with the budget each task ran at."""
    parts = []
    for task, entry in summary.items():
        key, label, direction = METRIC[task]
        b, rows = entry["budget"], entry["variants"]
        text = (f"{b['n_layers']} layers × d_model {b['d_model']}, {b['n_heads']} heads "
                f"({b['n_kv_heads'] or b['n_heads']} kv), qk-norm {'on' if b['qk_norm'] else 'off'}, "
                f"vocab {b['vocab_size']}; {b['steps']} steps × {b['batch_size']}×{b['seq_len']} tokens, lr {b['lr']}")
        if task == "mqar":
            text += f"; {b['mqar_num_kv_pairs']} key-value pairs per sequence"
        head = f"| variant | seeds | params | {label} (mean ± 95% CI) | paired Δ vs {baseline} (95% CI) |"
        rule = "|---|---|---|---|---|"
        if task == "mqar":
            head, rule = head + f" solved (acc ≥ {SOLVED}) |", rule + "---|"
        # No per-run time column: runs share the machine with each other (and whatever else runs), so
        # their wall times are not a cost comparison; recipes.bench measures that, interleaved.
        lines = [f"### {task.upper()}: {label}, {direction}", "", text, "", head, rule]
        for name, row in rows.items():
            line = (f"| {name} | {len(row['seeds'])} | {row['params'] / 1e6:.2f}M | {_fmt(row['estimate'])} "
                    f"| {_fmt(row['delta'], signed=True)} |")
            if task == "mqar":
                line += f" {row['solve_rate'] * len(row['seeds']):.0f}/{len(row['seeds'])} |"
            lines.append(line)
        if task == "mqar" and all("auc" in row for row in rows.values()):
            lines += ["", _speed_table(rows, b["steps"], baseline)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _speed_table(rows: dict[str, Any], steps: int, baseline: str) -> str:
    """MQAR learning speed: mean accuracy over training and each seed's first step at >= SOLVED."""
    lines = [f"Learning speed: mean held-out accuracy over training (area under the accuracy curve) "
             f"and, per seed, the first evaluated step with accuracy ≥ {SOLVED} (— : not within {steps} steps).",
             "", f"| variant | mean accuracy over training (95% CI) | paired Δ vs {baseline} (95% CI) | "
             "step reaching ≥ 0.9, per seed |", "|---|---|---|---|"]
    for name, row in rows.items():
        reached = ", ".join("—" if s is None else str(s) for s in row["steps_to_solve"])
        lines.append(f"| {name} | {_fmt(row['auc'])} | {_fmt(row['auc_delta'], signed=True)} | {reached} |")
    return "\n".join(lines)


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: time with at least one run in progress."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def cost_line(runs: list[dict[str, Any]]) -> str:
    """Runs, their summed training time, and the wall time during which at least one run was
    training (a study resumed in a later session does not count the pause)."""
    train = sum(r["seconds"] for r in runs)
    text = f"{len(runs)} runs; {train / 60:.1f} minutes of training summed over runs (one thread each)"
    stamps = [(r["finished_at"] - r["seconds"], r["finished_at"]) for r in runs if "finished_at" in r]
    if stamps:
        text += f"; wall time {busy_seconds(stamps) / 60:.1f} minutes with runs in progress"
    return text + "."


def write_report(out: str | Path, baseline: str = "baseline", runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Render ``summary.json`` and ``results.md`` in ``out`` from ``runs`` (default: all of
    ``out/runs.jsonl``); the PNGs are :func:`recipes.experiments.study_plots.plot`'s."""
    out = Path(out)
    runs = load_runs(out / "runs.jsonl") if runs is None else runs
    if not runs:
        raise ValueError(f"no finished runs in {out / 'runs.jsonl'}")
    summary = summarize(runs, baseline)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(format_markdown(summary, baseline) + "\n" + cost_line(runs) + "\n")
    return summary
