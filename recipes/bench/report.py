"""Tables, JSON and the PNG plot of :mod:`recipes.bench.step` results."""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any, Iterable

import torch


def describe_machine(device: str, threads: int) -> str:
    """One line naming the device, torch version, thread count and load."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{name}; torch {torch.__version__}; {threads} threads; load average {load}"


def _get(row: Any, key: str, default: Any = None) -> Any:
    return row.get(key, default) if isinstance(row, dict) else getattr(row, key, default)


#: Relative metrics: ``(result field, column name)``; the counters' only where measured.
METRICS = (("rel_time", "step time"), ("rel_cycles", "cycles"), ("rel_instructions", "instructions"),
           ("rel_memory", "peak memory"))


def measured_keys(rows: list[Any], keys: Iterable[str]) -> list[str]:
    """The ``keys`` with a finite value in at least one row (hardware counters may be missing)."""
    return [k for k in keys if any(math.isfinite(_get(r, k, math.nan)) for r in rows)]


def stack_speedups(results: Iterable[Any]) -> list[tuple[str, str, dict[str, float]]]:
    """``(strategy, mode, {metric: stack ÷ buffer})`` for every ``X[stack]`` row.

    Time and counter ratios divide the two rows' ratios to the baseline (each paired per round
    with the same baseline steps), steadier on a busy machine than dividing raw medians.
    """
    rows = {(_get(r, "label"), _get(r, "mode")): r for r in results}
    out = []
    for (label, mode), r in rows.items():
        base = label.removesuffix("[stack]")
        if label.endswith("[stack]") and (base, mode) in rows:
            buf = rows[(base, mode)]
            out.append((base, mode, {k: _get(r, k, math.nan) / _get(buf, k, math.nan) for k, _ in METRICS}))
    return out


def format_table(results: Iterable[Any]) -> str:
    """Markdown table of the main results, followed by the buffer-vs-stack ratios."""
    results = list(results)
    counters = measured_keys(results, ("rel_cycles", "rel_instructions"))
    names = dict(METRICS)
    lines = [
        "| variant | mode | ms/step | tokens/s | step time ÷ baseline | "
        + "".join(f"{names[k]} ÷ baseline | " for k in counters) + "peak MiB | memory ÷ baseline |",
        "|---|---|---:|---:|---:|" + "---:|" * len(counters) + "---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {_get(r, 'label')} | {_get(r, 'mode')} | {_get(r, 'ms_per_step'):.1f} | "
            f"{_get(r, 'tokens_per_s'):,.0f} | {_get(r, 'rel_time'):.3f} ± {_get(r, 'spread'):.3f} | "
            + "".join(f"{_get(r, k):.3f} | " for k in counters)
            + f"{_get(r, 'peak_bytes') / 2**20:.1f} | {_get(r, 'rel_memory'):.3f} |"
        )
    speedups = stack_speedups(results)
    if speedups:
        keys = ["rel_time", *counters, "rel_memory"]
        lines += ["", "| strategy | mode | " + " | ".join(f"stack ÷ buffer {names[k]}" for k in keys) + " |",
                  "|---|---|" + "---:|" * len(keys)]
        lines += [f"| {s} | {m} | " + " | ".join(f"{ratios[k]:.3f}" for k in keys) + " |" for s, m, ratios in speedups]
    return "\n".join(lines)


def format_sweep(rows: list[dict[str, Any]]) -> str:
    """One markdown table per (axis, mode); each cell lists the ratios to the baseline."""
    keys = ["rel_time", *measured_keys(rows, ("rel_cycles", "rel_instructions")), "rel_memory"]
    legend = " / ".join(dict(METRICS)[k] for k in keys)
    blocks = [f"Cells: {legend}, each ÷ baseline (baseline row: ms/step, peak MiB)."]
    for axis, mode in dict.fromkeys((r["axis"], r["mode"]) for r in rows):
        sel = [r for r in rows if r["axis"] == axis and r["mode"] == mode]
        values = sorted({r["value"] for r in sel})
        cell = {(r["label"], r["value"]): r for r in sel}
        lines = [f"| {axis} ({mode}) | " + " | ".join(str(v) for v in values) + " |", "|---|" + "---:|" * len(values)]
        for label in dict.fromkeys(r["label"] for r in sel):
            cells = []
            for v in values:
                r = cell.get((label, v))
                if r is None:
                    cells.append("-")
                elif label == "baseline":
                    cells.append(f"{r['ms_per_step']:.1f} ms, {r['peak_bytes'] / 2**20:.1f} MiB")
                else:
                    cells.append(" / ".join(f"{r[k]:.2f}" for k in keys))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        speedups = {v: {s: ratios for s, _, ratios in stack_speedups(r for r in sel if r["value"] == v)} for v in values}
        for strategy in dict.fromkeys(s for by_strategy in speedups.values() for s in by_strategy):
            cells = [" / ".join(f"{speedups[v][strategy][k]:.2f}" for k in keys) if strategy in speedups[v] else "-"
                     for v in values]
            lines.append(f"| {strategy}: stack ÷ buffer | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_results(out: str, machine: str, config: dict[str, Any], seconds: float, rows: list[dict[str, Any]],
                  **extra: Any) -> dict[str, Any]:
    """The report of a side-by-side benchmark — machine, config, load average at the end, duration,
    ``extra`` fields, rows — written to ``out/results.json`` and returned."""
    report = {"machine": machine, "config": config, "loadavg_end": os.getloadavg(), "seconds": seconds, **extra,
              "rows": rows}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def write_outputs(report: dict[str, Any], out: str) -> None:
    """``results.json`` and ``tables.md`` under ``out``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    text = [f"<!-- {report['machine']} -->", format_table(report["main"]), "", format_sweep(report["sweep"]), ""]
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write("\n".join(text))


def plot_sweep(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """PNG grid: each measured ratio to the baseline (rows) over sequence length and depth (columns).

    Needs matplotlib (the ``bench`` extra); without it the plot is skipped with a message.
    """
    if not rows:
        return
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed (pip install -e '.[bench]'); skipped the plot {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["rel_time", *measured_keys(rows, ("rel_cycles", "rel_instructions")), "rel_memory"]
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 2.6 * len(keys) + 0.8), sharey="row", squeeze=False)
    labels = [lab for lab in dict.fromkeys(r["label"] for r in rows) if lab != "baseline"]
    colors = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    for col, axis in enumerate(("seq_len", "depth")):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            for mode, style in (("eager", "-"), ("compiled", "--")):
                for lab in labels:
                    pts = sorted((r["value"], r[key]) for r in rows
                                 if r["axis"] == axis and r["mode"] == mode and r["label"] == lab)
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", ms=3, color=colors[lab], label=f"{lab} ({mode})")
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xscale("log", base=2)
            ticks = sorted({r["value"] for r in rows if r["axis"] == axis})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("sequence length" if axis == "seq_len" else "layers")
            ax.set_ylabel(f"{dict(METRICS)[key]} ÷ baseline")
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    legend_rows = (len(names) + 3) // 4
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.025 * legend_rows * 3 / len(keys), 1, 0.97))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
