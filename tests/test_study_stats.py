"""The multi-seed study's statistics, tables and plots against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from recipes.experiments import study_report
from recipes.experiments.study_report import format_markdown, mean_ci, paired_delta, summarize, t975


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 40), 50, 100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df


def test_mean_ci_and_paired_delta_hand_computed():
    base = {0: 2.00, 1: 2.10, 2: 1.90}
    variant = {0: 1.97, 1: 2.08, 2: 1.86}  # differences -0.03, -0.02, -0.04
    # unpaired: mean 1.97, deviations 0, +0.11, -0.11 -> sd = sqrt(2 * 0.0121 / 2) = 0.11
    est = mean_ci(list(variant.values()))
    assert est.mean == pytest.approx(1.97) and est.n == 3
    assert est.half_width == pytest.approx(4.302653 * 0.11 / math.sqrt(3), rel=1e-6)  # 0.27326
    # paired: mean -0.03, deviations 0, +0.01, -0.01 -> sd 0.01; 4.302653 * 0.01 / sqrt(3) = 0.024841
    delta = paired_delta(variant, base)
    assert delta.mean == pytest.approx(-0.03) and delta.half_width == pytest.approx(0.024841, abs=1e-6)
    assert delta.sd == pytest.approx(0.01)
    # only shared seeds pair; one pair has no interval
    one = paired_delta({0: 1.5, 7: 9.0}, {0: 1.0, 5: 0.0})
    assert one.mean == pytest.approx(0.5) and one.half_width is None and one.n == 1
    assert paired_delta({1: 1.0}, {0: 1.0}) is None
    with pytest.raises(ValueError, match="values must not be empty"):
        mean_ci([])


def _fake_run(task: str, name: str, seed: int, value: float) -> dict:
    spec = {"task": task, "seed": seed, "variant": {"name": name},
            "model": {"n_layers": 2, "d_model": 8, "n_heads": 2, "n_kv_heads": None, "qk_norm": True, "vocab_size": 8},
            "train": {"steps": 3, "batch_size": 1, "seq_len": 4, "lr": 1e-3, "warmup": 1},
            "mqar": {"vocab_size": 8, "num_kv_pairs": 2}}
    metric = "val_loss" if task == "lm" else "accuracy"
    return {metric: value, "spec": spec, "params": 1000, "seconds": 1.0, "curve": [[3, value]]}


def test_summary_table_solve_rate_and_single_seed():
    accs = {"baseline": [0.95, 0.5, 1.0], "static": [0.92, 0.9, 0.2]}
    runs = [_fake_run("mqar", n, s, a) for n, values in accs.items() for s, a in enumerate(values)]
    runs.append(_fake_run("lm", "baseline", 0, 2.0))
    summary = summarize(runs)
    static = summary["mqar"]["variants"]["static"]
    assert static["solve_rate"] == pytest.approx(2 / 3)  # 0.92 and 0.9 reach the 0.9 threshold
    assert static["delta"]["mean"] == pytest.approx((-0.03 + 0.4 - 0.8) / 3)
    assert summary["mqar"]["budget"]["mqar_num_kv_pairs"] == 2 and summary["lm"]["budget"]["steps"] == 3
    table = format_markdown(summary)
    assert "| static | 3 | 0.00M | 0.6733 ± " in table and "| 2/3 |" in table and "acc ≥ 0.9" in table
    assert "| baseline | 1 | 0.00M | 2.0000 ± n/a | - |" in table  # one seed: no interval


def test_learning_speed_hand_computed(tmp_path):
    """Mean accuracy over training (area under the accuracy curve), its paired Δ and the first step
    at >= 0.9, from hand-made curves; runs without curves get no learning-speed table."""
    curves = {"baseline": [[[10, 0.3], [20, 0.3], [30, 0.3], [40, 0.3]], [[10, 0.3], [20, 0.5], [30, 0.9], [40, 1.0]]],
              "static": [[[10, 0.3], [20, 0.95], [30, 1.0], [40, 1.0]], [[10, 0.89], [20, 1.0], [30, 1.0], [40, 1.0]]]}
    runs = []
    for name, per_seed in curves.items():
        for seed, curve in enumerate(per_seed):
            runs.append({**_fake_run("mqar", name, seed, curve[-1][1]), "accuracy_curve": curve})
    assert study_report.accuracy_auc(runs[1]) == pytest.approx(0.675) and study_report.steps_to_solve(runs[1]) == 30
    assert study_report.steps_to_solve(runs[0]) is None
    rows = summarize(runs)["mqar"]["variants"]
    # baseline AUCs 0.3, 0.675; static 0.8125, 0.9725 -> paired differences 0.5125, 0.2975
    assert rows["baseline"]["auc"]["mean"] == pytest.approx(0.4875) and rows["baseline"]["auc_delta"] is None
    assert rows["static"]["auc_delta"]["mean"] == pytest.approx(0.405)
    # deviations ±0.1075 -> sd 0.1075·√2; half-width t(1) · sd / √2 = 12.706205 · 0.1075
    assert rows["static"]["auc_delta"]["half_width"] == pytest.approx(12.706205 * 0.1075)
    assert rows["baseline"]["steps_to_solve"] == [None, 30] and rows["static"]["steps_to_solve"] == [20, 20]
    table = format_markdown(summarize(runs))
    assert "| static | 0.8925 ± " in table and "| +0.4050 ± " in table and "| —, 30 |" in table
    assert "Learning speed" not in format_markdown(summarize([_fake_run("mqar", "baseline", 0, 0.5)]))
    from recipes.experiments.study_plots import plot

    names = {p.name for p in plot(summarize(runs), runs, tmp_path) if p.stat().st_size}
    assert names == {"curves_mqar.png", "delta_mqar.png", "accuracy_mqar.png"}


def test_wall_time_is_the_union_of_run_intervals():
    """Two workers overlap; a resumed study's pause (here 1000 s) is not wall time."""
    assert study_report.busy_seconds([(0, 10), (5, 12), (1000, 1003), (1001, 1002)]) == 15
    assert study_report.busy_seconds([]) == 0
    runs = [{"seconds": 10.0, "finished_at": 10.0}, {"seconds": 7.0, "finished_at": 12.0},
            {"seconds": 3.0, "finished_at": 1003.0}]
    assert study_report.cost_line(runs) == ("3 runs; 0.3 minutes of training summed over runs (one thread each); "
                                            "wall time 0.2 minutes with runs in progress.")
