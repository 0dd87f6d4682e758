"""The budget ladder's report rendered: the Markdown tables and the two plots.

Everything here reads the report :func:`recipes.experiments.ladder_report.build` returns (the
content of ``summary.json``) and computes no statistic of its own, so what a reader sees in
``results.md`` and the PNGs is what the claims tests check in ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def plan_of(variants: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The planned-runs record of a rung (``summary.json``'s ``planned``): its variants, each one's
    seeds and the number of runs."""
    return {"variants": list(variants), "seeds": {n: list(s) for n, s in variants.items()},
            "runs": sum(len(s) for s in variants.values())}


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
        planned = rung.get("planned") or plan_of({n: r["seeds"] for n, r in rows.items()})
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
