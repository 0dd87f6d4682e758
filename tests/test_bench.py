"""Smoke tests of recipes.bench (step, with measure and report).

The measurement functions run on a 32-wide, 2-layer model for a step or two and produce
well-formed tables, JSON and PNG. Nothing here asserts timings.
"""

import json
import math

import pytest
import torch

from recipes.bench import measure as bench_measure
from recipes.bench import step as bench
from recipes.bench.report import format_sweep, format_table, plot_sweep, stack_speedups
from value_routing.strategies import STRATEGIES

TINY = bench_measure.BenchConfig(batch=2, seq_len=8, n_layers=2, warmup=1, rounds=2, steps=1)


@pytest.fixture(scope="module")
def small_size():
    """A 32-wide size for the bench (registered for this module only)."""
    from recipes.lm.builders import SIZES

    SIZES["bench_test"] = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64)
    yield "bench_test"
    del SIZES["bench_test"]


def test_discover_variants_covers_registry():
    variants = bench_measure.discover_variants()
    assert variants[0].label == "baseline"
    assert {v.strategy for v in variants} == set(STRATEGIES)
    for v in variants:  # strategies with an `impl` option get one row per storage
        if "impl" in v.options and v.options["impl"] == "stack":
            assert any(w.strategy == v.strategy and w.options.get("impl") == "buffer" for w in variants)
    assert [v.label for v in bench_measure.discover_variants(["satformer"])] == ["baseline", "satformer"]
    with pytest.raises(ValueError, match="strategies must be among"):
        bench_measure.discover_variants(["nope"])


def test_bench_config_validates():
    with pytest.raises(ValueError, match="device must be one of"):
        bench_measure.BenchConfig(device="tpu")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        bench_measure.BenchConfig(rounds=0)
    with pytest.raises(ValueError, match="variants must start with the baseline"):
        bench_measure.measure(bench_measure.discover_variants()[1:], TINY, "eager")


def test_measure_eager_all_variants(small_size, tmp_path):
    variants = bench_measure.discover_variants()
    results = bench_measure.measure(variants, bench_measure.BenchConfig(**{**TINY.__dict__, "size": small_size}), "eager")
    assert [r.label for r in results] == [v.label for v in variants]
    base = results[0]
    assert base.rel_time == 1.0 and base.rel_memory == 1.0
    for r in results:
        assert r.mode == "eager" and r.ms_per_step > 0 and math.isfinite(r.rel_time)
        # at least parameters + AdamW state (3x params) are resident
        assert r.peak_bytes > 0 and r.rel_memory > 0
    # memory is deterministic: what a variant adds to the baseline's state and activations shows
    mem = {r.label: r.peak_bytes for r in results}
    assert mem["hyper"] > mem["baseline"] and mem["satformer"] > mem["baseline"]  # n streams; V1 and W_α
    table = format_table(results)
    assert table.count("\n") >= len(results) + 1
    assert all(f"| {v.label} | eager |" in table for v in variants)
    assert len(stack_speedups(results)) == sum(v.label.endswith("[stack]") for v in variants)


def test_peak_memory_counts_state_and_activations(small_size):
    cfg = bench_measure.BenchConfig(**{**TINY.__dict__, "size": small_size})
    batch = (torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    runner = bench_measure.Runner(bench_measure.discover_variants()[0], cfg, batch, "eager")
    runner.step()  # creates the AdamW state
    params = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    assert runner.persistent_bytes() >= 3 * params  # params + exp_avg + exp_avg_sq
    assert bench_measure.peak_step_bytes(runner) >= params  # gradients are allocated during the step


def test_main_quick_writes_tables_json_and_png(small_size, tmp_path):
    pytest.importorskip("matplotlib")
    labels = [v.label for v in bench_measure.discover_variants()][:3]
    report = bench.main([
        "--quick", "--no-compile", "--out", str(tmp_path), "--size", small_size, "--strategies", *labels,
        "--seq-len", "8", "--sweep-seq", "8", "16", "--sweep-depth", "2", "3", "--rounds", "1", "--threads", "1",
    ])
    assert {r["label"] for r in report["main"]} == set(labels)
    assert {(r["axis"], r["value"]) for r in report["sweep"]} == {("seq_len", 8), ("seq_len", 16), ("depth", 2), ("depth", 3)}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["sweep"]) == 4 * len(labels)
    tables = (tmp_path / "tables.md").read_text()
    assert "step time ÷ baseline" in tables and "| seq_len (eager) | 8 | 16 |" in tables
    assert "| baseline | eager |" in tables
    assert (tmp_path / "bench_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_sweep(report["sweep"]).count("| depth (eager) |") == 1


def test_plot_handles_compiled_rows(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        {"axis": axis, "value": v, "mode": mode, "label": lab, "rel_time": 1.0 + 0.01 * v, "rel_memory": 1.0,
         "rel_cycles": 1.0, "rel_instructions": 1.0}
        for axis in ("seq_len", "depth") for v in (2, 4) for mode in ("eager", "compiled") for lab in ("baseline", "x")
    ]
    plot_sweep(rows, str(tmp_path / "p.png"), title="t")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_lean_bench_quick_writes_rows_for_every_variant(tmp_path):
    from recipes.bench import lean

    report = lean.main(["--quick", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows == json.loads(json.dumps(report["rows"]))
    assert [(r["seq_len"], r["variant"]) for r in rows] == [(s, v) for s in (32, 64) for v in lean.VARIANTS]
    for r in rows:
        assert r["peak_bytes"] > 0 and r["ms_per_step"] > 0 and math.isfinite(r["rel_time"])
    assert all(r["rel_time"] == 1.0 and r["saved_gb"] == 0.0 for r in rows if r["variant"] == "plain")
    assert "activation_cut_vs_chunked" in rows[2]
    assert report["config"] == {"size": "tiny", "strategy": "satformer", "batch": 1, "seq_lens": [32, 64],
                                "rounds": 2, "threads": 2}


def test_timed_steps_leaves_prepare_out_and_divides_by_per_call(monkeypatch):
    """On a fake clock: only step() is timed, prepare() runs before each step, per_call divides."""
    clock = [0.0]
    monkeypatch.setattr(bench_measure.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench_measure, "process_counters", lambda: None)
    calls: list[str] = []

    class Runner:
        device = torch.device("cpu")
        per_call = 4

        def prepare(self) -> None:
            calls.append("prepare")
            clock[0] += 100.0  # untimed

        def step(self) -> None:
            calls.append("step")
            clock[0] += 2.0 + len(calls) / 100

    times = bench_measure.timed_steps(Runner(), 3)
    assert calls == ["prepare", "step"] * 3
    assert [t[0] for t in times] == pytest.approx([(2.0 + n / 100) / 4 for n in (2, 4, 6)])
    assert all(math.isnan(t[1]) and math.isnan(t[2]) for t in times)
