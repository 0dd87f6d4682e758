"""The budget ladder's evidence report (recipes.experiments.ladder_report): its statistics against
sums written out here, its tables, plots and command line, and a real (tiny) rung end to end."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from recipes.eval.analyze import TOKEN_CLASSES
from recipes.experiments import ladder_report as lr
from recipes.experiments import study
from recipes.experiments.study_config import VARIANTS, Shape, StudyConfig, Task
from recipes.experiments.study_report import t975
from recipes.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HEADS = 3, 2


def _gates(seed: int, shift: float) -> dict:
    """analyze_gates' format for gated layers 1..2 × 2 heads, values from the seed."""
    mean = [[0.1 * (l + 1) + 0.01 * h * (l + 1) + shift + 0.001 * seed for h in range(HEADS)] for l in range(2)]
    zero = [[0.5 - 0.1 * l - 0.05 * h + 0.01 * seed for h in range(HEADS)] for l in range(2)]
    per_class = {c: {"count": 10, "mean_alpha": [[0.2 * i + 0.01 * seed + l * 0.1 for _ in range(HEADS)] for l in range(2)],
                     "frac_zero": zero} for i, c in enumerate(TOKEN_CLASSES)}
    return {"act": "relu", "gated_layers": [1, 2], "n_kv_heads": HEADS, "tokens": 100, "mean_alpha": mean,
            "frac_zero": zero, "overall": {"mean_alpha": 0.2 + 0.01 * seed, "frac_zero": 0.4 - 0.02 * seed},
            "per_class": per_class}


def _run(variant: str, seed: int, loss: float, steps: int = 40, gates: bool = False) -> dict:
    curve = [[steps // 4 * (i + 1), 3.0 - 0.3 * i - 0.1 * seed] for i in range(4)]
    probe = {"offsets": [0, 1], "depths": list(range(LAYERS + 1)), "windows": 4, "seq_len": 16, "ridge": 1e-3,
             "accuracy": [[1.0 - 0.1 * d + 0.01 * seed + 0.02 * (variant != "baseline"), 0.5 - 0.05 * d + 0.03 * seed]
                          for d in range(LAYERS + 1)]}
    run = {"key": f"{variant}-{seed}-{steps}", "val_loss": loss, "curve": curve, "params": 1000, "seconds": 1.0,
           "domains": {"val": loss * 1.4, "prose": loss * 1.6 + 0.01 * seed, "skipped": {"c": "no headers here"}},
           "probe": probe,
           "spec": {"task": "lm", "seed": seed, "variant": {"name": variant, "strategy": VARIANTS[variant].strategy},
                    "model": {"d_model": 32, "n_layers": LAYERS, "n_heads": 2, "n_kv_heads": 1, "qk_norm": True,
                              "vocab_size": 256},
                    "train": {"steps": steps, "batch_size": 2, "seq_len": 16, "lr": 1e-3, "warmup": 4}}}
    if gates:
        run["gates"] = _gates(seed, 0.0)
    return run


LOSSES = {"baseline": [2.0, 2.1, 1.9], "static": [1.8, 1.95, 1.85], "satformer": [1.9, 1.9, 1.7]}


def _rung_runs(steps: int = 40) -> list[dict]:
    return [_run(v, s, LOSSES[v][s], steps, gates=v == "satformer") for v in LOSSES for s in range(3)]


def _ci(values):
    n = len(values)
    return statistics.mean(values), t975(n - 1) * statistics.stdev(values) / math.sqrt(n)


def _close(est, values):
    mean, hw = _ci(values)
    assert est["n"] == len(values) and math.isclose(est["mean"], mean, abs_tol=1e-12)
    assert math.isclose(est["half_width"], hw, abs_tol=1e-12)


def test_rung_statistics_are_paired_by_seed():
    rung = lr.rung_report(_rung_runs())
    b, s, g = LOSSES["baseline"], LOSSES["static"], LOSSES["satformer"]
    _close(rung["variants"]["static"]["delta"], [x - y for x, y in zip(s, b)])
    _close(rung["contrasts"]["satformer - static"], [x - y for x, y in zip(g, s)])
    assert rung["tokens"] == 40 * 2 * 16
    # the curve's point nearest 3/4 of 40 steps is step 30 (index 2): drop = c[2] - c[3] = 0.3 every seed
    assert rung["baseline_last_quarter_drop"]["mean"] == pytest.approx(0.3)
    prose = rung["domains"]["variants"]["satformer"]["prose"]
    _close(prose["delta"], [(x * 1.6 + 0.01 * i) - (y * 1.6 + 0.01 * i) for i, (x, y) in enumerate(zip(g, b))])
    assert rung["domains"]["variants"]["baseline"]["val"]["delta"] is None
    assert rung["domains"]["skipped"] == {"c": "no headers here"}
    probe = rung["probe"]["variants"]["static"]
    _close(probe["accuracy"][2][1], [0.5 - 0.1 + 0.03 * seed for seed in range(3)])
    assert probe["last_delta"][0]["mean"] == pytest.approx(0.02) and probe["last_delta"][1]["mean"] == pytest.approx(0.0)
    gate = rung["gates"]["satformer"]
    assert list(rung["gates"]) == ["satformer"]  # only runs that recorded gates
    _close(gate["frac_zero"], [0.4 - 0.02 * seed for seed in range(3)])
    _close(gate["layer_mean_alpha"][1], [(0.2 + 0.2 + 0.02 + 0.002 * seed) / 2 for seed in range(3)])
    assert [r["mean"] for r in gate["head_range"]] == pytest.approx([0.01, 0.02])  # heads differ more in layer 2
    _close(gate["per_class"][TOKEN_CLASSES[1]], [0.2 + 0.01 * seed + 0.05 for seed in range(3)])
    # layer 2's mean gate minus layer 1's, each averaged over heads: 0.1 + 0.01 · mean(h) = 0.105 every seed
    _close(gate["depth_delta"], [0.105] * 3)
    # category grid mean (0.2 i + 0.01 seed + 0.05) minus the all-token grid mean (0.1575 + 0.001 seed)
    for i, c in enumerate(TOKEN_CLASSES):
        _close(gate["class_delta"][c], [0.2 * i + 0.009 * seed + 0.05 - 0.1575 for seed in range(3)])


def test_rung_tables_follow_the_study_order_not_arrival():
    runs = _rung_runs()
    rung = lr.rung_report(runs[::-1])  # satformer's runs arrive first
    assert list(rung["domains"]["variants"]) == list(rung["probe"]["variants"]) == list(rung["variants"])
    assert list(rung["variants"])[0] == "baseline"


def test_contrast_and_deltas_use_only_the_seeds_both_have():
    runs = [r for r in _rung_runs() if not (r["spec"]["variant"]["name"] == "static" and r["spec"]["seed"] == 2)]
    rung = lr.rung_report(runs)
    _close(rung["contrasts"]["satformer - static"], [1.9 - 1.8, 1.9 - 1.95])
    assert rung["variants"]["static"]["delta"]["n"] == 2
    assert lr.contrast({"a": {}}, "a", "missing") is None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.5, 5.0), min_size=4, max_size=12))
def test_last_quarter_drop_reads_the_point_nearest_three_quarters(losses):
    curve = [[10 * (i + 1), v] for i, v in enumerate(losses)]
    end = curve[-1][0]
    nearest = min(range(len(curve)), key=lambda i: abs(curve[i][0] - 0.75 * end))
    assert lr.last_quarter_drop(curve) == pytest.approx(losses[nearest] - losses[-1])


def test_last_quarter_drop_needs_a_curve():
    with pytest.raises(ValueError, match="curve must have at least 4 points, got 2"):
        lr.last_quarter_drop([[1, 2.0], [2, 1.0]])


def _write(dir_: Path, runs: list[dict]) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))


def test_report_tables_plots_and_partial_rungs(tmp_path, monkeypatch):
    monkeypatch.setattr(lr, "PLANNED", {40: {**dict.fromkeys(("baseline", "static", "satformer"), (0, 1, 2, 3, 4)),
                                             "peri-ln": (0, 1, 2)}})
    _write(tmp_path / "steps-40", _rung_runs(40))
    _write(tmp_path / "steps-160", [r for r in _rung_runs(160) if r["spec"]["seed"] < 2])
    sweep = [_run("baseline", s, 2.0 + s * 0.1) for s in range(2)]
    for r in sweep:
        r["spec"]["train"]["lr"] = 3e-3
    _write(tmp_path / "sweep-lr3e-3", sweep)
    pub = tmp_path / "published"
    _write(pub, [replace_steps(r, 10) for r in _rung_runs(10)])
    report = lr.write(tmp_path, pub)
    assert list(report["rungs"]) == ["40", "160"]  # by budget, not by name
    assert report["rungs"]["160"]["variants"]["static"]["delta"]["n"] == 2
    assert report["sweep"]["rows"]["3e-3"]["values"] == [2.0, 2.1]
    assert report["published"]["tokens"] == 10 * 32 and "satformer - static" in report["published"]["contrasts"]
    md = (tmp_path / "results.md").read_text()
    assert "Runs finished: 9 of 18 planned; not run yet: peri-ln." in md
    assert "Runs finished: 6 (2 seeds per variant)." in md  # a rung no preset plans
    assert report["not_started"] == {}
    trend = report["trend"]
    assert list(trend["static − baseline"]) == ["10*", "40", "160"]  # published first, then by budget
    assert trend["static − baseline"]["160"] == report["rungs"]["160"]["variants"]["static"]["delta"]
    assert trend["static − baseline"]["10*"] == report["published"]["variants"]["static"]["delta"]
    assert trend["satformer − static"]["40"] == report["rungs"]["40"]["contrasts"]["satformer - static"]
    assert trend["baseline"]["40"] == report["rungs"]["40"]["variants"]["baseline"]["estimate"]
    row = trend["satformer − baseline"]
    assert ("| satformer − baseline | " + " | ".join(f"{row[k]['mean']:+.4f} ± {row[k]['half_width']:.4f}"
                                                   for k in ("10*", "40", "160")) + " |") in md
    assert "|  | 10 steps* | 40 steps | 160 steps |" in md
    monkeypatch.setitem(lr.PLANNED, 640, dict.fromkeys(("baseline", "static"), (0, 1, 2)))
    report = lr.write(tmp_path, pub, plots=False)
    assert report["not_started"] == {"640": {"variants": ["baseline", "static"], "runs": 6,
                                             "seeds": {"baseline": [0, 1, 2], "static": [0, 1, 2]}}}
    assert "### 640 steps: not run yet\n\nPlanned: 6 runs (baseline × 3, static × 3 seeds)." in (tmp_path / "results.md").read_text()
    assert "| 0.003 | 2 | 2.0000, 2.1000 |" in md
    delta = report["rungs"]["40"]["variants"]["static"]["delta"]
    assert f"{delta['mean']:+.4f} ± {delta['half_width']:.4f}" in md
    assert "Skipped: c (no headers here)." in md
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "trend.png").stat().st_size > 1000 and (tmp_path / "probe.png").stat().st_size > 1000


def replace_steps(run: dict, steps: int) -> dict:
    return {**run, "spec": {**run["spec"], "train": {**run["spec"]["train"], "steps": steps, "lr": 3e-3}}}


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recipes.experiments.ladder_report", *args], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_cli_errors_name_the_flag(tmp_path):
    for args, message in (
        (["--root", str(tmp_path / "nope")], "--root: "),
        (["--root", str(tmp_path)], "--root: no finished ladder or sweep runs under"),
    ):
        res = _cli(*args)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()[-1]) < 300
    _write(tmp_path / "steps-40", _rung_runs(40))
    res = _cli("--root", str(tmp_path), "--published", str(tmp_path / "none"))
    assert res.returncode == 2 and "--published: " in res.stderr
    res = _cli("--root", str(tmp_path), "--published", "", "--no-plots")
    assert res.returncode == 0 and "### 40 steps" in res.stdout and not (tmp_path / "trend.png").exists()


def test_a_real_tiny_rung_end_to_end(tmp_path, monkeypatch):
    """Runs the study runner with end-of-run evals, then the report on what it wrote."""
    monkeypatch.setattr("recipes.experiments.study_run.EVAL_WINDOWS", 4)
    monkeypatch.setattr("recipes.experiments.study_run.EVAL_SEQ_LEN", 16)
    train = TrainConfig(steps=8, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    cfg = StudyConfig(variants=tuple(VARIANTS[v] for v in ("baseline", "static", "satformer")), seeds=(0, 1),
                      shape=Shape(32, 3, 2, 1), lm=Task(train, corpus_bytes=200_000, evals=("domains", "probe", "gates")),
                      curve_points=4)
    runs = study.run_study(cfg, tmp_path / "steps-8", progress=False)
    report = lr.write(tmp_path, plots=False)["rungs"]["8"]
    by = {(r["spec"]["variant"]["name"], r["spec"]["seed"]): r for r in runs}
    assert report["contrasts"]["satformer - static"]["mean"] == pytest.approx(
        statistics.mean(by["satformer", s]["val_loss"] - by["static", s]["val_loss"] for s in (0, 1)))
    assert report["probe"]["depths"] == list(range(4)) and set(report["gates"]) == {"satformer"}
    assert report["gates"]["satformer"]["layers"] == [1, 2]
    assert {"val", "prose"} <= set(report["domains"]["variants"]["static"])


def test_trend_plot_draws_the_trend_table(tmp_path, monkeypatch):
    """trend.png's points are the trend table's rows: every rung's Δ filled, the published one hollow."""
    import matplotlib.axes

    _write(tmp_path / "steps-40", _rung_runs(40))
    _write(tmp_path / "steps-160", [r for r in _rung_runs(160) if r["spec"]["seed"] < 2])
    pub = tmp_path / "published"
    _write(pub, [replace_steps(r, 10) for r in _rung_runs(10)])
    drawn: dict[tuple[str | None, bool], list[list[float]]] = {}
    real = matplotlib.axes.Axes.errorbar

    def errorbar(self, x, y, *args, **kwargs):
        drawn.setdefault((kwargs.get("label"), kwargs.get("mfc") == "none"), []).append(list(y))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    report = lr.write(tmp_path, pub)
    trend = {label: row for label, row in report["trend"].items() if label != "baseline"}
    filled = {label: ys for (label, hollow), ys in drawn.items() if not hollow and " − " in (label or "")}  # not the probe's
    assert set(filled) == set(trend)
    for label, row in trend.items():  # both panels, the rungs by budget
        assert filled[label] == [[row[k]["mean"] for k in ("40", "160")]] * 2
    hollow = sorted(y for (_, is_hollow), ys in drawn.items() if is_hollow for (y,) in ys)
    assert hollow == sorted(row["10*"]["mean"] for row in trend.values() if "10*" in row) and hollow
