"""Smoke tests of recipes.bench.hf_vs_ours: a 32-wide model for a round or two, well-formed rows,
table and JSON, argparse-style user errors. Nothing here asserts timings."""

import json
import math

import pytest

pytest.importorskip("transformers")

from recipes.bench import hf_vs_ours as bench  # noqa: E402


@pytest.fixture
def small_size():
    """A 32-wide size for the bench (registered for one test)."""
    from recipes.lm.builders import SIZES

    SIZES["bench_hf_test"] = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                                  qk_norm=True)  # Shape.config turns q/k-norm off: Llama has none
    yield "bench_hf_test"
    del SIZES["bench_hf_test"]


def test_measure_gives_one_row_per_task_from_one_function(small_size):
    shape = bench.Shape(small_size, batch=2, seq_len=8, prompt_len=4, new_tokens=3, rounds=2, steps=1)
    assert not shape.config().qk_norm and shape.config().max_seq_len == 8
    rows, gap = bench.measure(shape)
    assert gap < 1e-5  # the converted LlamaForCausalLM computes our logits
    assert [r["task"] for r in rows] == list(bench.TASKS)
    for r in rows:
        assert r["ours_ms"] > 0 and r["hf_ms"] > 0 and math.isfinite(r["ratio"]) and r["spread"] >= 0
        assert r["met"] == (r["ratio"] <= 1.0)
    table = bench.format_rows(rows).splitlines()
    assert table[0].startswith("| task | ours ms | HF ms | ours ÷ HF |") and len(table) == 2 + len(rows)
    assert "| decode (per token) |" in table[-1]


def test_main_writes_the_json(small_size, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "shape_of", lambda args: bench.Shape(small_size, 1, batch=1, seq_len=4, prompt_len=2,
                                                                     new_tokens=2, rounds=1, steps=1))
    report = bench.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == report["rows"] and saved["config"]["quick"] is True
    assert saved["config"]["n_layers"] == 1 and saved["config"]["d_model"] == 32
    assert {"machine", "seconds", "loadavg_end", "max_logit_gap"} <= saved.keys()


@pytest.mark.parametrize("argv, message", [(["--batch", "0"], "argument --batch: must be an integer >= 1, got 0"),
                                           (["--size", "huge"], "argument --size: invalid choice")])
def test_user_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_shape_validates():
    with pytest.raises(ValueError, match="new_tokens must be >= 1, got 0"):
        bench.Shape("tiny", new_tokens=0)
    with pytest.raises(ValueError, match="size must be one of"):
        bench.Shape("huge")


def test_docs_markers_render_the_table_and_top_level_numbers(tmp_path):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_results_hook", root / "docs" / "hooks" / "bench_results.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    (tmp_path / "results" / "bench").mkdir(parents=True)
    rows = [{"task": t, "ours_ms": 2.0, "hf_ms": 4.0, "ratio": 0.5, "spread": 0.01, "met": True} for t in bench.TASKS]
    (tmp_path / "results" / "bench" / "h.json").write_text(json.dumps({"max_logit_gap": 3.2e-7, "rows": rows}))
    hook.on_config({"docs_dir": str(tmp_path)})
    assert hook.render("h.json hf-table") == bench.format_rows(rows)
    assert hook.render("h.json top max_logit_gap .1e") == "3.2e-07"
    assert hook.render("h.json value rows task=decode ratio .2f") == "0.50"
    with pytest.raises(ValueError, match="no top-level field 'nope'"):
        hook.render("h.json top nope")
