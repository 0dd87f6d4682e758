"""Every command-line tool follows argparse's convention for user errors (STYLE.md 15).

A bad value — 0 or a negative count, a non-number, an unknown choice, an unknown or mistyped
``--set`` item, a config the dataclasses refuse, a path that does not exist — ends the tool with
exit status 2 and one ``prog: error: ...`` line on stderr (after argparse's usage lines) naming
the flag; never a traceback. Everything runs in-process: the work each tool would start after
its checks is replaced by :class:`Started`, so an input wrongly accepted fails fast instead of
training or benchmarking. One subprocess run checks the end-to-end exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import string
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes.bench import depth, lean
from recipes.bench import step as bench_step
from recipes.data import shards
from recipes.eval import analyze, mqar
from recipes.experiments import demo, study
from recipes.lm.builders import satformer
from recipes.lm.cli import dataclass_override, positive_int
from recipes.lm.config import ModelConfig
from recipes.tools import doctor, params
from recipes.train import pretrain

ROOT = Path(__file__).resolve().parents[1]


class Started(Exception):
    """A tool got past its argument checks and started its work."""


def _stop(*args, **kwargs):
    raise Started


#: ``tool -> (main, what its main does once the arguments are checked, argv every call needs)``.
TOOLS = {
    "pretrain": (pretrain.main, [(pretrain, "train")], []),
    "study": (study.main, [(study, "run_study"), (study, "write_report")], []),
    "demo": (demo.main, [(demo, "embedded_corpus")], []),
    "bench": (bench_step.main, [(bench_step, "process_counters")], []),
    "depth": (depth.main, [(depth, "process_counters")], []),
    "lean": (lean.main, [(lean.torch, "set_num_threads")], []),
    "analyze": (analyze.main, [(analyze, "train_tiny")], []),
    "mqar": (mqar.main, [(mqar, "train_mqar")], []),
    "doctor": (doctor.main, [(doctor, "environment")], []),
    "params": (params.main, [(params, "param_counts")], []),
    "shards": (shards.main, [(shards, "write_shards")], ["--out", "unused", __file__]),
}


@pytest.fixture(autouse=True)
def _no_work(monkeypatch):
    for _, stubs, _ in TOOLS.values():
        for owner, name in stubs:
            monkeypatch.setattr(owner, name, _stop)


def error_line(capsys, tool: str, argv: list[str]) -> str:
    """Run ``tool`` on ``argv``; assert exit status 2 and argparse's output; return the error line."""
    main, _, base = TOOLS[tool]
    with pytest.raises(SystemExit) as exit_:
        main([*base, *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("usage: "), err
    assert all(line.startswith(" ") for line in lines[1:-1]), err  # usage continuation lines only
    assert ": error: " in lines[-1] and len(lines) >= 2, err
    return lines[-1]


def assert_names(line: str, flag: str, *words: str) -> None:
    assert f"{flag}" in line.partition(": error: ")[2], line
    for word in words:
        assert word in line, line


# --- counts and numbers: 0, negatives and non-numbers are refused where they are parsed -------------

#: ``(tool, flag, kind)``; ``pos``: integer >= 1, ``nonneg``: integer >= 0, ``ge2``: integer >= 2,
#: ``fpos``: finite float > 0, ``fnonneg``: finite float >= 0.
NUMERIC = [
    *(("pretrain", f, "pos") for f in ("--steps", "--stop-after", "--micro-batch", "--grad-accum", "--seq-len",
                                       "--keep", "--eval-batches", "--log-every")),
    *(("pretrain", f, "nonneg") for f in ("--warmup", "--seed", "--ckpt-every", "--eval-every")),
    ("pretrain", "--lr", "fpos"), ("pretrain", "--grad-clip", "fpos"),
    ("pretrain", "--weight-decay", "fnonneg"), ("pretrain", "--min-lr-ratio", "fnonneg"),
    ("study", "--workers", "pos"), ("study", "--seeds", "nonneg"),
    *(("demo", f, "pos") for f in ("--steps", "--batch-size", "--seq-len")),
    ("demo", "--seed", "nonneg"), ("demo", "--lr", "fpos"),
    *(("bench", f, "pos") for f in ("--batch", "--seq-len", "--rounds", "--threads", "--sweep-seq")),
    ("bench", "--layers", "ge2"), ("bench", "--sweep-depth", "ge2"),
    *(("depth", f, "pos") for f in ("--widths", "--depths", "--batch", "--seq-len", "--rounds", "--threads")),
    *(("lean", f, "pos") for f in ("--seq-lens", "--batch", "--rounds", "--threads")),
    *(("analyze", f, "pos") for f in ("--last-k", "--steps", "--batches", "--seq-len")),
    ("analyze", "--seed", "nonneg"),
    *(("mqar", f, "pos") for f in ("--vocab-size", "--seq-len", "--num-kv-pairs", "--steps", "--batch-size",
                                   "--d-model", "--n-layers")),
    ("mqar", "--seed", "nonneg"), ("mqar", "--lr", "fpos"),
    ("doctor", "--bench-rounds", "pos"),
    ("shards", "--shard-tokens", "ge2"),
]
BELOW = {"pos": 0, "nonneg": -1, "ge2": 1}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


NOT_NUMBERS = st.text(string.ascii_letters + string.digits + "._", min_size=1, max_size=6).filter(
    lambda s: not _is_number(s))


def bad_values(kind: str) -> st.SearchStrategy[str]:
    if kind in BELOW:
        return st.one_of(st.integers(max_value=BELOW[kind]).map(str), NOT_NUMBERS,
                         st.floats(0.5, 9.5).filter(lambda x: x != int(x)).map(str))
    edge = [0.0] if kind == "fpos" else []
    below = st.floats(max_value=0.0, allow_nan=False).filter(lambda x: kind == "fpos" or x < 0)
    return st.one_of(below.map(repr),
                     st.sampled_from([*map(repr, edge), "nan", "inf", "-inf"]), NOT_NUMBERS)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(NUMERIC), data=st.data())
def test_bad_count_or_number_is_one_line_naming_the_flag(capsys, case, data):
    tool, flag, kind = case
    value = data.draw(bad_values(kind), label="value")
    line = error_line(capsys, tool, [f"{flag}={value}"])
    assert_names(line, f"argument {flag}:", "must be", repr(value) if not value.lstrip("-").isdigit() else value)


@pytest.mark.parametrize("tool, flag, kind", NUMERIC)
def test_zero_is_a_value_never_unset(capsys, tool, flag, kind):
    """The boundary value: 0 for counts >= 1 and floats > 0, -1 for counts >= 0, 1 for >= 2."""
    value = {"pos": "0", "nonneg": "-1", "ge2": "1", "fpos": "0", "fnonneg": "-0.5"}[kind]
    line = error_line(capsys, tool, [flag, value])
    assert_names(line, f"argument {flag}:", "must be", "got")


# --- unknown choices ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tool, flag", [
    ("pretrain", "--strategy"), ("pretrain", "--config"), ("pretrain", "--parallel"), ("pretrain", "--decay"),
    ("demo", "--strategies"), ("demo", "--size"), ("study", "--preset"), ("study", "--variants"),
    ("study", "--tasks"), ("bench", "--size"), ("bench", "--device"), ("depth", "--device"), ("lean", "--strategy"),
    ("lean", "--size"), ("analyze", "--act"), ("mqar", "--strategies"), ("doctor", "--dtypes"),
    ("doctor", "--compile-backend"), ("shards", "--format"),
])
def test_unknown_choice_names_the_flag(capsys, tool, flag):
    line = error_line(capsys, tool, [flag, "nope"])
    assert_names(line, f"argument {flag}:", "invalid choice: 'nope'")


def test_unknown_option_of_params(capsys):
    assert_names(error_line(capsys, "params", ["--xml"]), "unrecognized arguments: --xml")


# --- --set FIELD=VALUE ---------------------------------------------------------------------------------

def test_set_unknown_field_names_the_known_ones(capsys):
    line = error_line(capsys, "pretrain", ["--set", "nonsense=3"])
    assert_names(line, "argument --set:", "unknown ModelConfig field 'nonsense'",
                 *(f.name for f in dataclasses.fields(ModelConfig)))
    assert "did you mean" not in line
    line = error_line(capsys, "pretrain", ["--set", "d_modle=64"])
    assert_names(line, "argument --set:", "unknown ModelConfig field 'd_modle' (did you mean 'd_model'?)")


def _kind(hint) -> str:
    """What an annotation asks ``--set`` for, as the error message says it."""
    import typing
    from collections.abc import Mapping

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _kind(next(a for a in args if a is not type(None)))
        return f"{inner} or none" if inner in ("an int", "a float") else "other"
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return "a JSON object"
    return {int: "an int", float: "a float", bool: "a bool (true or false)"}.get(hint, "other")


def model_fields_by_kind() -> dict[str, list[str]]:
    """ModelConfig's fields grouped by :func:`_kind`, read now (another branch changes the fields)."""
    import typing

    hints, kinds = typing.get_type_hints(ModelConfig), {}
    for f in dataclasses.fields(ModelConfig):
        kinds.setdefault(_kind(hints[f.name]), []).append(f.name)
    return kinds


NONE_WORDS = ("none", "null", "true", "false")
BAD_FOR = {"an int": NOT_NUMBERS, "a float": NOT_NUMBERS,
           "a bool (true or false)": NOT_NUMBERS.filter(lambda s: s.lower() not in NONE_WORDS),
           "an int or none": NOT_NUMBERS.filter(lambda s: s.lower() not in NONE_WORDS),
           "a float or none": NOT_NUMBERS.filter(lambda s: s.lower() not in NONE_WORDS),
           "a JSON object": st.sampled_from(["[1]", "3", "{", "abc", '"x"'])}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_set_bad_value_names_field_type_and_value(capsys, data):
    kinds = model_fields_by_kind()
    assert {"d_model", "n_layers"} <= set(kinds["an int"]) and "qk_norm" in kinds["a bool (true or false)"]
    assert kinds["a JSON object"] == ["strategy_options"]
    cases = sorted((name, kind) for kind, names in kinds.items() if kind in BAD_FOR for name in names)
    name, kind = data.draw(st.sampled_from(cases), label="field")
    value = data.draw(BAD_FOR[kind], label="value")
    line = error_line(capsys, "pretrain", ["--set", f"{name}={value}"])
    assert_names(line, "argument --set:", f"{name} takes {kind}, got {value!r}")


def test_set_item_without_equals(capsys):
    assert_names(error_line(capsys, "pretrain", ["--set", "d_model"]), "argument --set:",
                 "takes FIELD=VALUE items, got 'd_model'")


def test_set_good_values_parse_to_the_field_types():
    optional = model_fields_by_kind()["an int or none"][:1]  # e.g. n_kv_heads, if ModelConfig has one
    args = pretrain.parse_args(["--set", "d_model=64", "qk_norm=true", "rope_theta=5e5", "attention_backend=sdpa",
                                'strategy_options={"act": "sigmoid"}', "n_layers=7",
                                *(f"{name}=none" for name in optional)])
    overrides = dict(args.model_overrides)
    assert overrides == {"d_model": 64, "qk_norm": True, "rope_theta": 500000.0, "attention_backend": "sdpa",
                         "strategy_options": {"act": "sigmoid"}, "n_layers": 7, **dict.fromkeys(optional)}
    assert type(overrides["d_model"]) is int and type(overrides["rope_theta"]) is float
    assert dict(pretrain.parse_args(["--set", "qk_norm=False"]).model_overrides) == {"qk_norm": False}
    cfg = pretrain.resolve(args, world=1)
    assert cfg.model_overrides == overrides


def test_set_follows_the_dataclass_it_is_given():
    """Fields are read when parsing: a dataclass with other fields gets other conversions."""

    @dataclasses.dataclass(frozen=True)
    class Other:
        block: str = "prenorm"
        width: int | None = None
        ratios: tuple[float, ...] = ()

    parse = dataclass_override(Other)
    assert parse("block=parallel") == ("block", "parallel")
    assert parse("width=none") == ("width", None) and parse("width=8") == ("width", 8)
    assert parse("ratios=[0.5, 2]") == ("ratios", (0.5, 2))
    with pytest.raises(argparse.ArgumentTypeError, match="unknown Other field 'd_model'; known fields: block, width, ratios"):
        parse("d_model=64")


# --- errors found after parsing: config validation and paths --------------------------------------

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("tool, argv, flag, words", [
    ("pretrain", ["--steps", "5", "--warmup", "5"], "--warmup", ("must be in [0, steps) = [0, 5), got 5",)),
    ("pretrain", ["--steps", "5", "--stop-after", "6"], "--stop-after", ("got 6",)),
    ("pretrain", ["--resume"], "--resume", ("needs ckpt_dir",)),
    ("pretrain", ["--min-lr-ratio", "1.5"], "--min-lr-ratio", ("must be in [0, 1]", "got 1.5")),
    ("pretrain", ["--resume", "--no-resume", "--resume"], "--resume needs", ()),
    ("pretrain", ["--set", "d_model=63"], "--set:", ("d_model (63) must be divisible by n_heads",)),
    ("pretrain", ["--set", "strategy=dense"], "--set:", ("--strategy, not --set",)),
    ("pretrain", ["--set", 'strategy_options={"act": "nope"}'], "--set:", ("strategy_options",)),
    ("pretrain", ["--seq-len", "100000"], "--seq-len", ("max_seq_len", "got 100000")),
    ("pretrain", ["--data", "/nonexistent/dir/*.bin"], "--data:", ("no .bin shards match",)),
    ("pretrain", ["--val-data", "/nonexistent/*.bin"], "--val-data:", ("no .bin shards match",)),
    ("pretrain", ["--tokenizer", "/nonexistent/tokenizer.json"], "--tokenizer:", ("not found",)),
    ("study", ["--seeds", "1", "1"], "--seeds", ("unique",)),
    ("study", ["--report-only", "--out", "/nonexistent/study"], "--out:", ("no finished runs",)),
    ("demo", ["--seq-len", "100000"], "--seq-len", ("max_seq_len",)),
    ("bench", ["--strategies", "nope"], "--strategies", ("unknown ['nope']",)),
    ("depth", ["--strategies", "baseline"], "--strategies", ("subset of",)),
    ("analyze", ["--checkpoint", "/nonexistent/ckpt"], "--checkpoint", ("safetensors",)),
    ("analyze", ["--last-k", "2"], "--last-k", ("--checkpoint",)),
    ("analyze", ["--seq-len", "100000"], "--seq-len", ("max_seq_len",)),
    ("mqar", ["--num-kv-pairs", "20"], "--vocab-size", ("num_kv_pairs",)),
    ("mqar", ["--seq-len", "8"], "--seq-len", ("got 8",)),
    ("mqar", ["--d-model", "30"], "--d-model", ("divisible by n_heads",)),
    ("shards", ["/nonexistent/doc.txt"], "argument files:", ("not found: '/nonexistent/doc.txt'",)),
    ("shards", ["--tokenizer", "/nonexistent/tokenizer.json"], "--tokenizer:", ("not found",)),
    pytest.param("bench", ["--device", "cuda"], "--device", ("cuda",), marks=pytest.mark.skipif(CUDA, reason="has CUDA")),
    pytest.param("depth", ["--device", "cuda"], "--device", ("cuda",), marks=pytest.mark.skipif(CUDA, reason="has CUDA")),
    pytest.param("doctor", ["--device", "cuda"], "--device", ("cuda",), marks=pytest.mark.skipif(CUDA, reason="has CUDA")),
])
def test_config_and_path_errors_after_parsing(capsys, monkeypatch, tool, argv, flag, words):
    if tool == "analyze" and "--seq-len" in argv:  # the trained model, without training it
        monkeypatch.setattr(analyze, "train_tiny", lambda *a: analyze.CausalLM(satformer("tiny")))
    assert_names(error_line(capsys, tool, argv), flag, *words)


def test_real_bugs_keep_their_traceback(monkeypatch):
    """Only the user's input is checked: a ValueError from the work itself is not turned into exit 2."""

    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside training")

    monkeypatch.setattr(pretrain, "train", broken)
    with pytest.raises(ValueError, match="a bug deep inside training"):
        pretrain.main(["--steps", "3"])


# --- good values still work (nothing is trained) -----------------------------------------------------

def test_good_values_are_kept_not_defaulted(monkeypatch):
    parser = pretrain.build_parser()
    args = parser.parse_args(["--steps", "7", "--grad-accum", "3", "--micro-batch", "2", "--warmup", "0",
                              "--seed", "0", "--eval-every", "0", "--lr", "1e-4"])
    cfg = pretrain.checked_config(parser, args, world=1)
    assert (cfg.steps, cfg.grad_accum, cfg.micro_batch, cfg.warmup, cfg.seed, cfg.lr) == (7, 3, 2, 0, 0, 1e-4)
    unset = pretrain.resolve(pretrain.parse_args([]), world=1)
    assert (unset.steps, unset.grad_accum, unset.micro_batch) == (300, 1, 16)  # DEFAULTS["tiny"]
    with pytest.raises(Started):
        pretrain.main(["--steps", "7"])
    assert bench_step.bench_config(bench_step.parse_args(["--device", "cpu", "--batch", "3", "--layers", "2"])).batch == 3
    assert positive_int("12") == 12


def test_resolve_refuses_zero_counts():
    """``resolve`` takes 0 as a value: an unset option is None (a namespace not from the parser too)."""
    counts = ["--steps", "10", "--warmup", "0", "--grad-accum", "1", "--micro-batch", "2", "--seq-len", "16"]
    for name in ("steps", "grad_accum", "micro_batch", "seq_len"):
        args = pretrain.parse_args(counts)
        setattr(args, name, 0)
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
            pretrain.resolve(args, world=1)


def test_pretrain_steps_zero_end_to_end():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "recipes.train.pretrain", "--steps", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.rstrip("\n").split("\n")[-1].endswith(
        "error: argument --steps: must be an integer >= 1, got 0"), proc.stderr


def test_shards_refuses_undecodable_text_and_an_unusable_out(capsys, tmp_path):
    """Checked before any shard is written: nothing partial is left behind."""
    bad, good, a_file = tmp_path / "latin1.txt", tmp_path / "good.txt", tmp_path / "taken"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    good.write_text("ok\n")
    a_file.write_text("")
    out = tmp_path / "out"
    assert_names(error_line(capsys, "shards", [str(good), str(bad), "--out", str(out)]), "argument files:",
                 "not UTF-8 text", repr(str(bad)))
    assert not out.exists()
    assert_names(error_line(capsys, "shards", [str(good), "--out", str(a_file)]), "--out",
                 "is not a directory")


def test_shards_out_that_fails_while_writing(capsys, tmp_path, monkeypatch):
    """What parse time cannot see (a full disk) is one error line too, not a traceback."""
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shards, "write_shards", full_disk)
    good = tmp_path / "good.txt"
    good.write_text("ok\n")
    assert_names(error_line(capsys, "shards", [str(good), "--out", str(tmp_path / "out")]), "--out",
                 "cannot write shards", os.strerror(errno.ENOSPC))


def test_pretrain_checks_its_outputs_and_shards_before_training(capsys, tmp_path):
    """Paths a run would only trip over later (a checkpoint directory under a file, a log file that is
    a directory, shards too short for one window or with a wrong header) end it before step 0."""
    a_file, short = tmp_path / "a_file", tmp_path / "short.bin"
    a_file.write_text("x")
    shards.write_shard(short, list(range(10)))
    cases = [
        (["--ckpt-dir", str(a_file / "ckpt")], "--ckpt-dir", ("is not a directory", repr(str(a_file)))),
        (["--ckpt-dir", str(a_file)], "--ckpt-dir", ("exists and is not a directory",)),
        (["--log-file", str(tmp_path)], "--log-file", ("exists and is not a file",)),
        (["--log-file", str(a_file / "log.jsonl")], "--log-file", ("is not a directory",)),
        (["--data", str(short), "--seq-len", "16"], "--data", ("no window of seq_len + 1 = 17 tokens",)),
        (["--val-data", str(short), "--seq-len", "16"], "--val-data", ("no window",)),
        (["--data", str(a_file), "--shard-format", "llmc"], "--data", ("magic must be one of",)),
    ]
    for argv, flag, words in cases:
        assert_names(error_line(capsys, "pretrain", argv), flag, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "short.bin"]  # nothing created


def test_pretrain_accepts_outputs_it_can_create(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(pretrain, "train", lambda cfg: seen.setdefault("cfg", cfg))
    pretrain.main(["--ckpt-dir", str(tmp_path / "new" / "ckpt"), "--log-file", str(tmp_path / "new" / "log.jsonl")])
    assert seen["cfg"].ckpt_dir == str(tmp_path / "new" / "ckpt")
    assert not (tmp_path / "new").exists()  # checked, not created: the run creates them


#: ``(tool, output flag, kind)`` of every tool that writes its results to a path the user names.
OUTPUTS = [("study", "--out", "directory"), ("analyze", "--out", "directory"), ("doctor", "--json", "file"),
           ("bench", "--out", "directory"), ("depth", "--out", "directory"), ("lean", "--out", "directory"),
           ("shards", "--out", "directory")]


@pytest.mark.parametrize("tool, flag, kind", OUTPUTS)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(capsys, tmp_path, tool, flag, kind):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    under_a_file = str(a_file / "sub" / ("out.json" if kind == "file" else "out"))
    assert_names(error_line(capsys, tool, [flag, under_a_file]), f"argument {flag}",
                 f"cannot create {under_a_file!r}", f"{str(a_file)!r} is not a directory")
    wrong_kind = str(tmp_path) if kind == "file" else str(a_file)
    assert_names(error_line(capsys, tool, [flag, wrong_kind]), f"argument {flag}", f"exists and is not a {kind}")
    with pytest.raises(Started):  # a path it can create passes (and is not created by the check)
        TOOLS[tool][0]([*TOOLS[tool][2], flag, str(tmp_path / "new" / "out")])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("module, flag", [("recipes.eval.probe", "--json"), ("recipes.bench.hf_patch", "--out"),
                                          ("recipes.bench.hf_vs_ours", "--out")])
def test_output_flags_of_the_other_tools_are_checked_at_parse_time(tmp_path, module, flag):
    import importlib

    parser = importlib.import_module(module).build_parser()
    action = next(a for a in parser._actions if flag in a.option_strings)
    kind = "file" if flag == "--json" else "directory"
    assert getattr(action.type, "__name__", "") == f"writable_{kind}"
    with pytest.raises(argparse.ArgumentTypeError, match="is not a directory"):
        action.type(str(Path(__file__) / "x"))
