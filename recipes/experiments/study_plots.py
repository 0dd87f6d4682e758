"""The study's plots (:mod:`recipes.experiments.study`): training-loss curves with seed bands,
paired Δ vs the baseline with 95% CI bars, and MQAR accuracy along training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipes.experiments.study_report import METRIC, SOLVED


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], out: Path, baseline: str = "baseline") -> list[Path]:
    """``curves_<task>.png`` (training loss, mean over seeds with a min-max band),
    ``delta_<task>.png`` (paired Δ vs baseline with 95% CI bars) and, when MQAR runs recorded it,
    ``accuracy_mqar.png`` (held-out accuracy along training, one line per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task, entry in summary.items():
        rows = entry["variants"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in rows:
            curves = [r["curve"] for r in runs if r["spec"]["task"] == task and r["spec"]["variant"]["name"] == name]
            steps = [p[0] for p in curves[0]]
            per_step = list(zip(*[[p[1] for p in c] for c in curves]))
            ax.plot(steps, [sum(v) / len(v) for v in per_step], label=name)
            ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.2)
        ax.set(xlabel="step", ylabel="training loss", title=f"{task}: training loss (mean, min-max over seeds)")
        ax.legend(fontsize=8)
        paths.append(out / f"curves_{task}.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)

        if task == "mqar" and all("auc" in row for row in rows.values()):
            paths.append(_plot_accuracy(rows, runs, out))
        deltas = [(n, r["delta"]) for n, r in rows.items() if r["delta"] is not None]
        if not deltas:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(deltas)))
        ys = range(len(deltas))
        ax.errorbar([d["mean"] for _, d in deltas], ys, xerr=[d["half_width"] or 0 for _, d in deltas], fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(list(ys), [n for n, _ in deltas])
        ax.set(xlabel=f"paired Δ {METRIC[task][1]} vs {baseline} (95% CI)", title=f"{task}: difference to {baseline}")
        paths.append(out / f"delta_{task}.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths


def _plot_accuracy(rows: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> Path:
    """``accuracy_mqar.png``: held-out MQAR accuracy along training, one thin line per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(rows):
        for j, run in enumerate(r for r in runs if r["spec"]["task"] == "mqar" and r["spec"]["variant"]["name"] == name):
            steps, accs = zip(*run["accuracy_curve"])
            ax.plot(steps, accs, color=f"C{i}", lw=1, alpha=0.8, label=name if j == 0 else None)
    ax.axhline(SOLVED, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="step", ylabel="held-out accuracy", title="mqar: accuracy along training (one line per seed)")
    ax.legend(fontsize=8)
    path = out / "accuracy_mqar.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
