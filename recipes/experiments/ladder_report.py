r"""The evidence report of the budget ladder, from the committed runs of its presets alone.

``python -m recipes.experiments.ladder_report [--root docs/results/ladder] [--published docs/results/study] [--no-plots]``

reads the ``runs.jsonl`` of the baseline-only learning-rate sweep (``ROOT/sweep-lr*``), of every
rung (``ROOT/steps-N``, the ``ladder-N`` presets and ``ladder-1000-forms``) and of the published
250-step study, and writes ``ROOT/summary.json``, ``ROOT/results.md`` and the plots
``ROOT/trend.png`` and ``ROOT/probe.png`` (drawn by :mod:`recipes.experiments.ladder_render`). A rung with some runs still missing is reported with
the seeds it has (the tables say how many of the planned ones), so the report can be rendered
while the ladder is still running. Statistics are :mod:`recipes.experiments.study_report`'s: mean
± Student-t 95 % interval over seeds, and paired differences (same seed) with their own interval.

Per rung:

* **val loss** and its paired Δ vs the baseline (the study's table), and whether the baseline's
  curve has flattened: the **last quarter's drop**, the training loss's mean over the window
  ending at 3/4 of the steps minus that over the last window, per seed (:func:`last_quarter_drop`);
* **held-out domains**: bits/byte per domain (:mod:`recipes.eval.domains`), paired Δ vs baseline;
* **lexical probe**: accuracy by depth for each offset (:mod:`recipes.eval.probe`);
* **gate** statistics of the SATFormer variants (:func:`recipes.eval.analyze.analyze_gates`),
  over seeds: the fraction of exactly-zero gates, the mean gate per layer (depth), the spread of
  the mean gate across the kv-heads of a layer (head specificity) and the mean gate per byte
  category; and two paired contrasts (same seed), which a seed-to-seed spread cannot fake: the last
  gated layer's mean gate minus the first's (depth), and each category's mean gate minus the mean
  over all tokens (category sensitivity).

Across rungs, the **trend** (a table, :func:`trend`, and ``trend.png``): the baseline's val loss,
each variant's paired Δ vs baseline and satformer − static (paired by seed) against the tokens seen (``steps × batch × seq_len``). The published study (250 steps) ran
at its own learning rate, stated next to it; the rungs share the sweep's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from recipes.eval.analyze import TOKEN_CLASSES
from recipes.experiments.study_config import LADDER_FORMS, LADDER_FORMS_SEEDS, LADDER_LR, LADDER_RUNGS, LADDER_STEPS, SWEEP_LRS
from recipes.experiments.ladder_render import format_markdown, plan_of, plot
from recipes.experiments.study_report import load_runs, mean_ci, paired_delta, summarize

#: The differences the trend follows (minuend, subtrahend), beyond every variant − baseline.
CONTRASTS: tuple[tuple[str, str], ...] = (("satformer", "static"),)
#: Budgets of the rungs a report expects, with each planned variant's seeds (for "n of planned"):
#: the ``ladder-N`` presets' and, at the first rung, ``ladder-1000-forms``'.
PLANNED: dict[int, dict[str, tuple[int, ...]]] = {
    steps: {name: seeds for name in variants} for steps, (variants, seeds) in LADDER_RUNGS.items()}
for _name in LADDER_FORMS:
    PLANNED[LADDER_STEPS[0]].setdefault(_name, LADDER_FORMS_SEEDS)


def _est(values: Sequence[float]) -> dict[str, Any] | None:
    return mean_ci(list(values)).__dict__ if values else None


def _by_variant(runs: Sequence[Mapping[str, Any]], order: Sequence[str] = ()) -> dict[str, dict[int, Mapping[str, Any]]]:
    """Runs by variant then seed; variants in ``order`` first (the study table's), then as they come."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {name: {} for name in order}
    for run in runs:
        out.setdefault(run["spec"]["variant"]["name"], {})[run["spec"]["seed"]] = run
    return {name: seeds for name, seeds in out.items() if seeds}


def last_quarter_drop(curve: Sequence[Sequence[float]]) -> float:
    """Training loss (window mean) at 3/4 of the run minus that at its end: how much the last
    quarter of training still lowered it."""
    if len(curve) < 4:
        raise ValueError(f"curve must have at least 4 points, got {len(curve)}")
    end = curve[-1][0]
    quarter = min(curve, key=lambda p: abs(p[0] - 0.75 * end))
    return float(quarter[1] - curve[-1][1])


def contrast(cells: Mapping[str, Mapping[int, Mapping[str, Any]]], a: str, b: str, key: str = "val_loss") -> dict[str, Any] | None:
    """Paired ``a − b`` of ``key`` over the seeds both variants have (``None`` if either is absent)."""
    if a not in cells or b not in cells:
        return None
    est = paired_delta({s: r[key] for s, r in cells[a].items()}, {s: r[key] for s, r in cells[b].items()})
    return None if est is None else est.__dict__


def domain_stats(cells: Mapping[str, Mapping[int, Mapping[str, Any]]], baseline: str = "baseline") -> dict[str, Any]:
    """Per variant and domain: bits/byte over seeds and the paired Δ vs ``baseline``; ``skipped``:
    the domains some run could not evaluate, with the reason it recorded."""
    base = cells.get(baseline, {})
    out: dict[str, Any] = {"variants": {}, "skipped": {}}
    for name, seeds in cells.items():
        rows: dict[str, Any] = {}
        for run in seeds.values():
            out["skipped"].update(run.get("domains", {}).get("skipped", {}))
        domains = [d for d in next(iter(seeds.values())).get("domains", {}) if d != "skipped"]
        for domain in domains:
            values = {s: r["domains"][domain] for s, r in seeds.items() if domain in r.get("domains", {})}
            ref = {s: r["domains"][domain] for s, r in base.items() if domain in r.get("domains", {})}
            delta = paired_delta(values, ref) if name != baseline else None
            rows[domain] = {"estimate": _est(list(values.values())), "delta": None if delta is None else delta.__dict__}
        if rows:
            out["variants"][name] = rows
    return out


def probe_stats(cells: Mapping[str, Mapping[int, Mapping[str, Any]]], baseline: str = "baseline") -> dict[str, Any]:
    """Per variant: probe accuracy by depth × offset over seeds (``accuracy[depth][offset]`` an
    estimate), and the paired Δ vs ``baseline`` at the last depth (the stream the LM head reads)."""
    out: dict[str, Any] = {"variants": {}}
    base = cells.get(baseline, {})
    for name, seeds in cells.items():
        probed = {s: r["probe"] for s, r in seeds.items() if "probe" in r}
        if not probed:
            continue
        first = next(iter(probed.values()))
        out.update(offsets=first["offsets"], depths=first["depths"])
        grid = [[_est([p["accuracy"][d][k] for p in probed.values()]) for k in range(len(first["offsets"]))]
                for d in range(len(first["depths"]))]
        last: list[dict[str, Any] | None] = []
        for k in range(len(first["offsets"])):
            ref = {s: r["probe"]["accuracy"][-1][k] for s, r in base.items() if "probe" in r}
            delta = paired_delta({s: p["accuracy"][-1][k] for s, p in probed.items()}, ref) if name != baseline else None
            last.append(None if delta is None else delta.__dict__)
        out["variants"][name] = {"seeds": sorted(probed), "accuracy": grid, "last_delta": last}
    return out


def gate_stats(cells: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per SATFormer variant, over seeds: overall zero-gate fraction and mean gate; per gated layer
    the mean gate and zero fraction (averaged over kv-heads) and the range of the mean gate across
    its kv-heads; the mean gate per byte category (averaged over layers and heads); and, paired by
    seed, ``depth_delta`` (the last gated layer's mean gate minus the first's) and ``class_delta``
    (each category's mean gate minus the mean over all tokens, both averaged over layers and heads)."""
    out: dict[str, Any] = {}
    for name, seeds in cells.items():
        gates = [r["gates"] for _, r in sorted(seeds.items()) if "gates" in r]
        if not gates:
            continue
        layers = gates[0]["gated_layers"]

        def per_layer(g: Mapping[str, Any], key: str, i: int) -> float:
            row = g[key][i]
            return sum(row) / len(row)

        def grid_mean(grid: Sequence[Sequence[float]], g: Mapping[str, Any]) -> float:
            return sum(map(sum, grid)) / (len(layers) * g["n_kv_heads"])

        classes, class_delta = {}, {}
        for c in TOKEN_CLASSES:
            seen = [g for g in gates if g["per_class"][c]["mean_alpha"] is not None]
            classes[c] = _est([grid_mean(g["per_class"][c]["mean_alpha"], g) for g in seen])
            class_delta[c] = _est([grid_mean(g["per_class"][c]["mean_alpha"], g) - grid_mean(g["mean_alpha"], g)
                                   for g in seen])
        out[name] = {
            "act": gates[0]["act"], "seeds": len(gates), "layers": layers,
            "frac_zero": _est([g["overall"]["frac_zero"] for g in gates]),
            "mean_alpha": _est([g["overall"]["mean_alpha"] for g in gates]),
            "layer_mean_alpha": [_est([per_layer(g, "mean_alpha", i) for g in gates]) for i in range(len(layers))],
            "layer_frac_zero": [_est([per_layer(g, "frac_zero", i) for g in gates]) for i in range(len(layers))],
            "head_range": [_est([max(g["mean_alpha"][i]) - min(g["mean_alpha"][i]) for g in gates]) for i in range(len(layers))],
            "depth_delta": _est([per_layer(g, "mean_alpha", len(layers) - 1) - per_layer(g, "mean_alpha", 0)
                                 for g in gates]) if len(layers) > 1 else None,
            "per_class": classes,
            "class_delta": class_delta,
        }
    return out


def rung_report(runs: Sequence[Mapping[str, Any]], baseline: str = "baseline") -> dict[str, Any]:
    """Everything one budget's runs say (see the module docstring)."""
    summary = summarize(runs, baseline)["lm"]
    cells = _by_variant(runs, list(summary["variants"]))
    train = next(iter(runs))["spec"]["train"]
    drops = {s: last_quarter_drop(r["curve"]) for s, r in cells.get(baseline, {}).items()}
    return {
        **summary,
        "tokens": train["steps"] * train["batch_size"] * train["seq_len"],
        "baseline_last_quarter_drop": _est(list(drops.values())),
        "contrasts": {f"{a} - {b}": contrast(cells, a, b) for a, b in CONTRASTS},
        "domains": domain_stats(cells, baseline),
        "probe": probe_stats(cells, baseline),
        "gates": gate_stats(cells),
    }


def sweep_report(root: Path) -> dict[str, Any]:
    """The baseline-only sweep: per learning rate the val loss over its seeds; the winner once every
    lr of :data:`SWEEP_LRS` has finished runs."""
    rows = {}
    for label, lr in SWEEP_LRS.items():
        runs = load_runs(root / f"sweep-lr{label}" / "runs.jsonl")
        if runs:
            values = [r["val_loss"] for r in sorted(runs, key=lambda r: r["spec"]["seed"])]
            rows[label] = {"lr": lr, "values": values, "estimate": _est(values)}
    return {"rows": rows, "ladder_lr": LADDER_LR}


def build(root: str | Path, published: str | Path | None = None) -> dict[str, Any]:
    """The whole report as JSON: ``sweep``, ``rungs`` (by steps, with ``planned`` variants and seeds)
    and, when given, the ``published`` study's LM runs as the 250-step reference."""
    root = Path(root)
    rungs: dict[str, Any] = {}
    for directory in sorted(root.glob("steps-*"), key=lambda p: int(p.name.split("-")[1])):
        runs = load_runs(directory / "runs.jsonl")
        if runs:
            steps = int(directory.name.split("-")[1])
            report = rung_report(runs)
            if steps in PLANNED:
                report["planned"] = plan_of(PLANNED[steps])
            rungs[str(steps)] = report
    not_started = {str(steps): plan_of(plan) for steps, plan in sorted(PLANNED.items()) if str(steps) not in rungs}
    out: dict[str, Any] = {"sweep": sweep_report(root), "rungs": rungs, "not_started": not_started}
    if published is not None:
        lm = [r for r in load_runs(Path(published) / "runs.jsonl") if r["spec"]["task"] == "lm"]
        if lm:
            cells = _by_variant(lm)
            ref = summarize(lm)["lm"]
            t = lm[0]["spec"]["train"]
            ref.update(tokens=t["steps"] * t["batch_size"] * t["seq_len"],
                       contrasts={f"{a} - {b}": contrast(cells, a, b) for a, b in CONTRASTS})
            out["published"] = ref
    out["trend"] = trend(out)
    return out


def trend(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The trend across budgets, by row (``baseline`` val loss, every ``X − baseline`` and the
    :data:`CONTRASTS`), each ``{steps: estimate}`` over the rungs and, under the key
    ``f"{steps}*"``, the published study's point at its own lr; rows that no rung has are left out."""
    columns: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [
        (steps, rung["variants"], rung["contrasts"]) for steps, rung in report["rungs"].items()]
    pub = report.get("published")
    if pub is not None:
        columns.insert(0, (f"{pub['budget']['steps']}*", pub["variants"], pub["contrasts"]))
    rows: dict[str, dict[str, Any]] = {"baseline": {}}
    for key, variants, contrasts in columns:
        if "baseline" in variants:
            rows["baseline"][key] = variants["baseline"]["estimate"]
        for name, row in variants.items():
            if name != "baseline" and row["delta"] is not None:
                rows.setdefault(f"{name} − baseline", {})[key] = row["delta"]
        for name, est in contrasts.items():
            if est is not None:
                rows.setdefault(name.replace(" - ", " − "), {})[key] = est
    # the published study's other variants have no rung to compare with
    return {name: row for name, row in rows.items() if any(not k.endswith("*") for k in row)}


def write(root: str | Path, published: str | Path | None = None, plots: bool = True) -> dict[str, Any]:
    """Build the report and write ``summary.json``, ``results.md`` (and the plots) into ``root``."""
    root = Path(root)
    report = build(root, published)
    if not report["rungs"] and not report["sweep"]["rows"]:
        raise ValueError(f"no finished ladder or sweep runs under {str(root)!r}")
    (root / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    (root / "results.md").write_text(format_markdown(report))
    if plots:
        plot(report, root)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="docs/results/ladder", help="the ladder's results directory")
    parser.add_argument("--published", default="docs/results/study", help="the 250-step study ('' for none)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        parser.error(f"--root: {args.root!r} is not a directory")
    if not any(load_runs(d / "runs.jsonl") for d in [*root.glob("steps-*"), *root.glob("sweep-lr*")]):
        parser.error(f"--root: no finished ladder or sweep runs under {args.root!r} (run a ladder-* or sweep-lr* "
                     "preset of recipes.experiments.study first)")
    if args.published and not Path(args.published).is_dir():
        parser.error(f"--published: {args.published!r} is not a directory (pass '' for none)")
    report = write(root, args.published or None, plots=not args.no_plots)
    print((root / "results.md").read_text())
    return report


if __name__ == "__main__":
    main()
