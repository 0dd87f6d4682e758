r"""The evidence report of the budget ladder, from the committed runs of its presets alone.

``python -m recipes.experiments.ladder_report [--root docs/results/ladder] [--published docs/results/study] [--no-plots]``

reads the ``runs.jsonl`` of the baseline-only learning-rate sweep (``ROOT/sweep-lr*``), of every
rung (``ROOT/steps-N``, the ``ladder-N`` presets and ``ladder-1000-forms``) and of the published
250-step study, and writes ``ROOT/summary.json``, ``ROOT/results.md`` and the plots
``ROOT/trend.png`` and ``ROOT/probe.png``. A rung with some runs still missing is reported with
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
from recipes.experiments.study_report import load_runs, mean_ci, paired_delta, summarize

#: The differences the trend follows (minuend, subtrahend), beyond every variant − baseline.
CONTRASTS: tuple[tuple[str, str], ...] = (("satformer", "static"),)
#: Budgets of the rungs a report expects, with each planned variant's seeds (for "n of planned"):
#: the ``ladder-N`` presets' and, at the first rung, ``ladder-1000-forms``'.
PLANNED: dict[int, dict[str, tuple[int, ...]]] = {
    steps: {name: seeds for name in variants} for steps, (variants, seeds) in LADDER_RUNGS.items()}
for _name in LADDER_FORMS:
    PLANNED[LADDER_STEPS[0]].setdefault(_name, LADDER_FORMS_SEEDS)


def _plan(variants: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    return {"variants": list(variants), "seeds": {n: list(s) for n, s in variants.items()},
            "runs": sum(len(s) for s in variants.values())}


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
                report["planned"] = _plan(PLANNED[steps])
            rungs[str(steps)] = report
    not_started = {str(steps): _plan(plan) for steps, plan in sorted(PLANNED.items()) if str(steps) not in rungs}
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


def _fmt(est: Mapping[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if est is None:
        return "–"
    mean = f"{est['mean']:+.{digits}f}" if signed else f"{est['mean']:.{digits}f}"
    return mean + ("" if est["half_width"] is None else f" ± {est['half_width']:.{digits}f}")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report's tables, in the order docs/results.md discusses them."""
    lines: list[str] = ["### Learning-rate sweep (baseline only, 1000 steps)", ""]
    sweep = report["sweep"]
    lines += _table(["lr", "seeds", "val loss per seed", "mean ± 95% CI"],
                    [[f"{r['lr']:g}", str(len(r["values"])), ", ".join(f"{v:.4f}" for v in r["values"]),
                      _fmt(r["estimate"], 4)] for r in sweep["rows"].values()])
    chosen = sweep["ladder_lr"]
    lines += ["", f"Learning rate of every ladder run: {'not chosen yet (sweep unfinished)' if chosen is None else f'{chosen:g}'}."]
    pub = report.get("published")
    for steps, rung in report["rungs"].items():
        b, rows = rung["budget"], rung["variants"]
        planned = rung.get("planned") or _plan({n: r["seeds"] for n, r in rows.items()})
        lines += ["", f"### {steps} steps ({rung['tokens'] / 1e6:.2f}M tokens), lr {b['lr']:g}", ""]
        missing = [v for v in planned["variants"] if v not in rows]
        finished = sum(len(set(rows[n]["seeds"]) & set(s)) for n, s in planned["seeds"].items() if n in rows)
        counts = {len(s) for s in planned["seeds"].values()}
        lines.append(f"{b['n_layers']} layers × d_model {b['d_model']}; {b['steps']} steps × {b['batch_size']}×{b['seq_len']} "
                     f"tokens. Runs finished: {finished}" + (f" of {planned['runs']} planned" if "planned" in rung else "")
                     + (f" ({counts.pop()} seeds per variant)" if len(counts) == 1 else "")
                     + (f"; not run yet: {', '.join(missing)}" if missing else "") + ".")
        drop = rung["baseline_last_quarter_drop"]
        lines += ["", f"The baseline's training loss fell by {_fmt(drop)} nats over the last quarter of the run "
                      "(window mean at 3/4 of the steps minus the last window's)." if drop else "", ""]
        lines += _table(["variant", "seeds", "params", "val loss", "paired Δ vs baseline"],
                        [[n, str(len(r["seeds"])), f"{r['params'] / 1e6:.2f}M", _fmt(r["estimate"], 4),
                          _fmt(r["delta"], 4, signed=True)] for n, r in rows.items()])
        for name, est in rung["contrasts"].items():
            lines += ["", f"Paired {name}: {_fmt(est, 4, signed=True)}."]
        dom = rung["domains"]
        if dom["variants"]:
            names = list(next(iter(dom["variants"].values())))
            lines += ["", "Held-out domains, bits/byte (paired Δ vs baseline below each value):", ""]
            lines += _table(["variant", *names],
                            [[n, *(_fmt(r[d]["estimate"]) + ("" if r[d]["delta"] is None else f" ({_fmt(r[d]['delta'], signed=True)})")
                                   for d in names)] for n, r in dom["variants"].items()])
            if dom["skipped"]:
                lines += ["", "Skipped: " + "; ".join(f"{d} ({why})" for d, why in dom["skipped"].items()) + "."]
        probe = rung["probe"]
        if probe["variants"]:
            offs = probe["offsets"]
            lines += ["", "Lexical probe, accuracy at the first block's output (depth 1) and at the last depth "
                          "(the stream the head reads); paired Δ vs baseline at the last depth:", ""]
            head = ["variant", *(f"byte t−{k} @1" for k in offs), *(f"byte t−{k} @{probe['depths'][-1]}" for k in offs)]
            lines += _table(head, [[n, *(_fmt(r["accuracy"][1][k]) for k in range(len(offs))),
                                    *(_fmt(r["accuracy"][-1][k]) + ("" if r["last_delta"][k] is None else
                                                                   f" ({_fmt(r['last_delta'][k], signed=True)})")
                                      for k in range(len(offs)))] for n, r in probe["variants"].items()])
        for name, g in rung["gates"].items():
            lines += ["", f"Gate of `{name}` ({g['act']}, {g['seeds']} seeds): fraction of exact zeros "
                          f"{_fmt(g['frac_zero'])}, mean gate {_fmt(g['mean_alpha'])}.", ""]
            lines += _table(["layer", "mean gate", "zero fraction", "range across kv-heads"],
                            [[str(l), _fmt(g["layer_mean_alpha"][i]), _fmt(g["layer_frac_zero"][i]), _fmt(g["head_range"][i])]
                             for i, l in enumerate(g["layers"])])
            if g["depth_delta"] is not None:
                lines += ["", f"Paired, last gated layer minus first: {_fmt(g['depth_delta'], signed=True)}."]
            lines += ["", "Mean gate by byte category (paired, minus the mean over all tokens): "
                      + ", ".join(f"{c} {_fmt(e)}" + ("" if g["class_delta"][c] is None else f" ({_fmt(g['class_delta'][c], signed=True)})")
                                  for c, e in g["per_class"].items()) + "."]
    rows = report.get("trend", {})
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    if len(keys) > 1:
        keys.sort(key=lambda k: int(k.rstrip("*")))
        lines += ["", "### Across budgets", "",
                  "The baseline's val loss and every paired Δ (nats) by budget; * the published study, at its own lr"
                  + (f" ({pub['budget']['lr']:g})" if pub is not None else "") + ":", ""]
        lines += _table(["", *(f"{k.rstrip('*')} steps" + ("*" if k.endswith("*") else "") for k in keys)],
                        [[name, *(_fmt(row.get(k), 4, signed=name != "baseline") for k in keys)]
                         for name, row in rows.items()])
    for steps, plan in report.get("not_started", {}).items():
        lines += ["", f"### {steps} steps: not run yet", "",
                  f"Planned: {plan['runs']} runs ({', '.join(f'{n} × {len(s)}' for n, s in plan['seeds'].items())} seeds)."]
    if pub is not None:
        lines += ["", f"Reference: the published study's 250 steps ({pub['tokens'] / 1e6:.2f}M tokens) ran at lr "
                      f"{pub['budget']['lr']:g}, so its Δs enter the trend plot as hollow markers, not as a rung."]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def plot(report: Mapping[str, Any], out: Path) -> list[Path]:
    """``trend.png`` (paired Δ vs tokens seen, 95 % CI bars; left with the published study's
    different-lr points hollow, right the rungs alone at their own scale) and ``probe.png`` (probe accuracy by depth, per offset, last rung with probes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rungs = report["rungs"]
    pub = report.get("published")
    pub_key = None if pub is None else f"{pub['budget']['steps']}*"
    # the differences as the trend table has them (one owner of the across-budget data)
    series = {label: row for label, row in report["trend"].items() if label != "baseline"}
    if series:
        # left: the rungs with the published study's points; right: the rungs alone, zoomed (their
        # Δs are an order of magnitude smaller than the published ones and vanish at one scale)
        fig, (ax_all, ax_zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, (label, row) in enumerate(sorted(series.items())):
            color = f"C{i % 10}"
            points = [(rungs[k]["tokens"], est) for k, est in row.items() if k != pub_key]
            xs = [p[0] * (1 + 0.03 * i) for p in points]  # a small offset keeps the bars apart
            for ax in (ax_all, ax_zoom):
                ax.errorbar(xs, [p[1]["mean"] for p in points], yerr=[p[1]["half_width"] or 0 for p in points],
                            marker="o", capsize=3, color=color, label=label)
            ref = row.get(pub_key) if pub is not None else None
            if ref is not None:
                ax_all.errorbar([pub["tokens"] * (1 + 0.03 * i)], [ref["mean"]], yerr=[ref["half_width"] or 0],
                                marker="o", mfc="none", capsize=3, color=color, linestyle="none")
        for ax in (ax_all, ax_zoom):
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("tokens seen")
        ax_all.set_ylabel("paired Δ val loss (nats), 95% CI")
        ax_all.set_title("Budget ladder (hollow: published 250 steps, its own lr)", fontsize=10)
        ax_zoom.set_title("The rungs alone (one lr), zoomed", fontsize=10)
        ax_zoom.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "trend.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    probed = [r for r in rungs.values() if r["probe"]["variants"]]
    if probed:
        probe = probed[-1]["probe"]
        offs = probe["offsets"]
        fig, axes = plt.subplots(1, len(offs), figsize=(3.2 * len(offs), 3.4), sharey=True, squeeze=False)
        for k, ax in enumerate(axes[0]):
            for name, row in probe["variants"].items():
                means = [row["accuracy"][d][k]["mean"] for d in range(len(probe["depths"]))]
                hw = [row["accuracy"][d][k]["half_width"] or 0 for d in range(len(probe["depths"]))]
                ax.errorbar(probe["depths"], means, yerr=hw, marker=".", capsize=2, label=name)
            ax.set_title(f"byte t−{offs[k]}")
            ax.set_xlabel("depth (0 = embedding)")
        axes[0][0].set_ylabel("probe accuracy (95% CI)")
        axes[0][-1].legend(fontsize=6)
        fig.suptitle(f"Lexical probe, {probed[-1]['budget']['steps']} steps")
        fig.tight_layout()
        paths.append(out / "probe.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


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
