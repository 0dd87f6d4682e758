"""The multi-seed study's runner: resume, keys, workers, the demo's noise, errors, committed results
(the statistics and tables: tests/test_study_stats.py)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recipes.lm.builders import model_config
from recipes.lm.config import ModelConfig
from recipes.experiments.study_config import PAPER_STRATEGIES
from recipes.data import embedded_corpus
from recipes.experiments import study
from recipes.experiments.study_config import PRESETS, VARIANTS, Shape, StudyConfig, Task, study_model_config
from recipes.experiments.study_report import load_runs, summarize
from recipes.eval.mqar import MQARConfig, train_mqar
from recipes.experiments.demo import RunResult, format_table, noise_note, study_noise, train_one
import recipes.train.loop as loop
from recipes.train.loop import TrainConfig
from recipes.train.checkpoint import checkpoint_dirs, verify_checkpoint

TRAIN = TrainConfig(steps=4, batch_size=2, seq_len=16, warmup=1, eval_batches=1)


def _cfg(steps: int = 4, variants=("baseline", "satformer"), seeds=(0, 1), **kw) -> StudyConfig:
    return StudyConfig(variants=tuple(VARIANTS[v] for v in variants), seeds=seeds, shape=Shape(32, 3, 2, 1),
                       lm=Task(replace(TRAIN, steps=steps), corpus_bytes=200_000), curve_points=2, **kw)


def _results(runs: list[dict]) -> dict[str, tuple]:
    """What a run computed, by key (wall time excluded)."""
    return {r["key"]: (r["val_loss"], r["curve"], r["params"]) for r in runs}


# --- the runner -----------------------------------------------------------------------------

def test_resume_runs_only_the_unfinished_runs(tmp_path, monkeypatch):
    calls: list[str] = []
    real = study.run_one

    def interrupted(spec, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(spec["variant"]["name"])
        return real(spec, *args)

    monkeypatch.setattr(study, "run_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(_cfg(), tmp_path / "a", progress=False)
    assert len(load_runs(tmp_path / "a" / "runs.jsonl")) == 2
    with open(tmp_path / "a" / "runs.jsonl", "a") as f:
        f.write('{"key": "torn')  # a process killed mid-write
    calls.clear()
    monkeypatch.setattr(study, "run_one", lambda spec, *a: calls.append(spec["seed"]) or real(spec, *a))
    resumed = study.run_study(_cfg(), tmp_path / "a", progress=False)
    assert calls == [1, 1]  # seed 0's two runs had finished
    monkeypatch.setattr(study, "run_one", real)
    fresh = study.run_study(_cfg(), tmp_path / "b", progress=False)
    assert len(resumed) == 4 and _results(resumed) == _results(fresh)
    assert _results(load_runs(tmp_path / "a" / "runs.jsonl")) == _results(fresh)


def test_changed_settings_do_not_reuse_results(tmp_path, monkeypatch):
    study.run_study(_cfg(seeds=(0,)), tmp_path, progress=False)
    calls: list[str] = []
    real = study.run_one
    monkeypatch.setattr(study, "run_one", lambda spec, *a: calls.append(spec["variant"]["name"]) or real(spec, *a))
    study.run_study(_cfg(seeds=(0,)), tmp_path, progress=False)
    assert calls == []
    study.run_study(_cfg(steps=5, seeds=(0,)), tmp_path, progress=False)
    assert calls == ["baseline", "satformer"]
    study.run_study(_cfg(steps=5, seeds=(0,), variants=("baseline", "satformer-sigmoid")), tmp_path, progress=False)
    assert calls == ["baseline", "satformer", "satformer-sigmoid"]


_TRAIN_STEP = loop.train_step  # the real one, whatever a test patched in


class Interrupt(Exception):
    """Stands for a kill: raised by a train step after a given number of steps."""


def _stop_after(monkeypatch, n: int) -> list[int]:
    """Make the training loop's ``n + 1``-th step raise :class:`Interrupt`; returns the step counter."""
    real, taken = _TRAIN_STEP, [0]

    def step(*args, **kwargs):
        if taken[0] == n:
            raise Interrupt
        taken[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    return taken


def _without_time(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("seconds", "finished_at")}


@pytest.mark.parametrize("task", ["lm", "mqar"])
def test_interrupted_run_resumes_from_its_checkpoint_bit_identically(tmp_path, monkeypatch, task):
    monkeypatch.setattr("recipes.experiments.study_run.EVAL_WINDOWS", 4)
    monkeypatch.setattr("recipes.experiments.study_run.EVAL_SEQ_LEN", 16)
    mqar = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2)
    base = _cfg(steps=7, seeds=(1,), variants=("baseline", "satformer"))
    cfg = replace(base, lm=replace(base.lm, evals=("domains", "probe", "gates")),
                  mqar=Task(replace(TRAIN, steps=7), mqar))
    spec = next(s for s in study.plan(cfg) if s["task"] == task and s["variant"]["name"] == "satformer")
    straight = study.run_one(spec)
    path = tmp_path / "partial"
    _stop_after(monkeypatch, 5)
    with pytest.raises(Interrupt):
        study.run_one(spec, path, 2)
    saved = checkpoint_dirs(path)  # saved at steps 2 and 4, the newest kept
    assert [p.name for p in saved] == ["step_00000004"] and len(verify_checkpoint(saved[0])["losses"]) == 4
    taken = _stop_after(monkeypatch, 100)
    resumed = study.run_one(spec, path, 2)
    assert taken[0] == 3  # steps 5-7 only: it resumed, it did not start over
    assert _without_time(resumed) == _without_time(straight)
    other = dict(spec, seed=2, train={**spec["train"], "seed": 2})
    with pytest.raises(ValueError, match="partial: .* holds a checkpoint of another run"):
        study.run_one(other, path, 2)


def test_study_checkpoints_runs_in_progress_and_cleans_up(tmp_path, monkeypatch):
    cfg = _cfg(steps=6, seeds=(0,))
    fresh = study.run_study(cfg, tmp_path / "fresh", progress=False, checkpoint_every=0)
    out = tmp_path / "a"
    _stop_after(monkeypatch, 6 + 4)  # the first run finishes, the second is killed after 4 steps
    with pytest.raises(Interrupt):
        study.run_study(cfg, out, progress=False, checkpoint_every=3)
    first, second = study.plan(cfg)
    assert len(load_runs(out / "runs.jsonl")) == 1
    assert not study.partial_path(out, first).exists() and study.partial_path(out, second).exists()
    (study.partial_path(out, first) / "step_00000003").mkdir(parents=True)  # a run stored just before a kill
    taken = _stop_after(monkeypatch, 100)
    resumed = study.run_study(cfg, out, progress=False, checkpoint_every=3)
    assert taken[0] == 3 and _results(resumed) == _results(fresh)
    assert list((out / "partial").iterdir()) == []


def test_two_workers_give_bit_identical_results(tmp_path):
    cfg = _cfg(steps=3)
    one = study.run_study(cfg, tmp_path / "w1", workers=1, progress=False)
    two = study.run_study(cfg, tmp_path / "w2", workers=2, progress=False)
    assert _results(one) == _results(two)


def test_same_seed_same_init_and_data_as_the_demo():
    """A study run reproduces the demo's training exactly: the seed alone fixes init and data."""
    train, val = embedded_corpus(200_000)
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=32, warmup=1, eval_batches=1, seed=3)
    shape = Shape(128, 4, 4, 2, paper_arch=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the study's runs
    for name in ("baseline", "satformer"):
        model = study_model_config(VARIANTS[name], shape, 256, 512)
        assert model == model_config("tiny", name)
        spec = {"task": "lm", "model": model.__dict__, "train": cfg.__dict__, "corpus_bytes": 200_000, "curve_points": 3}
        got = study.run_one(spec)
        assert got["val_loss"] == train_one(model_config("tiny", name), cfg, train, val).val_loss
        assert len(got["curve"]) == 3
    task = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2)
    cfg = replace(cfg, seq_len=16)
    dims = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1)
    model = study_model_config(VARIANTS["satformer"], Shape(**dims, paper_arch=False), 16, 16)
    spec = {"task": "mqar", "model": model.__dict__, "train": cfg.__dict__, "mqar": task.__dict__, "curve_points": 3}
    got = study.run_one(spec)
    # evaluating along training (its own RNG) leaves the run unchanged: same accuracy as train_mqar
    assert got["accuracy"] == train_mqar("satformer", task, cfg, **dims).accuracy
    assert [p[0] for p in got["accuracy_curve"]] == [1, 2, 3] and got["accuracy_curve"][-1][1] == got["accuracy"]
    torch.set_num_threads(threads)


def test_report_only_rerenders_from_the_jsonl(tmp_path):
    study.run_study(_cfg(seeds=(0,)), tmp_path, progress=False)
    (tmp_path / "results.md").unlink(missing_ok=True)
    summary = study.main(["--report-only", "--out", str(tmp_path), "--no-plots"])
    assert set(summary["lm"]["variants"]) == {"baseline", "satformer"}
    text = (tmp_path / "results.md").read_text()
    assert "± n/a" in text and "paired Δ vs baseline" in text
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    paths = study_report_plots(tmp_path)
    assert {p.name for p in paths} == {"curves_lm.png", "delta_lm.png"} and all(p.stat().st_size for p in paths)


def study_report_plots(out: Path) -> list[Path]:
    from recipes.experiments.study_plots import plot

    runs = load_runs(out / "runs.jsonl")
    return plot(summarize(runs), runs, out)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(variants=("satformer",)), "must include the baseline 'baseline'"),
    (dict(seeds=()), "seeds must be non-empty"),
    (dict(seeds=(0, 0)), "seeds must be non-empty, unique"),
    (dict(variants=("baseline", "baseline")), "unique names"),
])
def test_bad_study_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kwargs)


def test_bad_settings_fail_before_any_run(tmp_path, capsys):
    with pytest.raises(ValueError, match="divisible by n_heads"):
        replace(_cfg(), shape=Shape(30, 3, 4, 1))
    with pytest.raises(ValueError, match="last_k must be None or in"):
        _cfg(variants=("baseline", "satformer-last4"))  # 3 layers: at most last_k = 2
    with pytest.raises(ValueError, match=r"train.seq_len \(16\) must equal mqar.seq_len \(32\)"):
        Task(TRAIN, MQARConfig(vocab_size=16, seq_len=32, num_kv_pairs=2))
    with pytest.raises(ValueError, match="variants must be among .* got unknown \\['nope'\\]"):
        _cfg().override(variants=["baseline", "nope"])
    with pytest.raises(ValueError, match="tasks must be among this preset's \\('lm',\\)"):
        _cfg().override(tasks=["mqar"])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        study.run_study(_cfg(), tmp_path, workers=0)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        study.run_study(_cfg(), tmp_path, checkpoint_every=-1)
    for argv, message in ((["--workers", "0"], "argument --workers: must be an integer >= 1, got 0"),
                          (["--variants", "baseline", "sat"], "argument --variants: invalid choice: 'sat'"),
                          (["--checkpoint-every", "-1"], "argument --checkpoint-every: must be an integer >= 0, got -1"),
                          (["--report-only", "--out", str(tmp_path / "empty")], "--out: no finished runs")):
        with pytest.raises(SystemExit) as exit_:  # argparse's convention: one line, exit status 2
            study.main(["--preset", "smoke", "--out", str(tmp_path), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists() or not load_runs(tmp_path / "runs.jsonl")


def test_smoke_preset_runs_end_to_end(tmp_path):
    summary = study.main(["--preset", "smoke", "--out", str(tmp_path), "--no-plots"])
    assert set(summary) == {"lm", "mqar"} and summary["mqar"]["variants"]["satformer"]["delta"]["n"] == 2
    assert len(load_runs(tmp_path / "runs.jsonl")) == 8


def test_demo_reads_the_noise_of_its_exact_budget(tmp_path):
    cfg = _cfg(seeds=(0, 1, 2), variants=("baseline", "satformer", "static"))
    runs = study.run_study(cfg, tmp_path, progress=False)
    from recipes.experiments.study_report import write_report

    write_report(tmp_path)
    model = study_model_config(VARIANTS["baseline"], cfg.shape, 256, 512)
    train = replace(cfg.lm.train, seed=5)  # the demo's seed is not part of the budget
    noise = study_noise("lm", train, model, tmp_path / "summary.json")
    assert set(noise) == {"baseline", "satformer", "static"}
    assert study_noise("lm", replace(train, steps=5), model, tmp_path / "summary.json") is None
    assert study_noise("lm", train, replace(model, n_layers=4), tmp_path / "summary.json") is None
    assert study_noise("lm", train, model, tmp_path / "missing.json") is None
    # the pooled single-seed SD of the paired Δ, by hand from the runs
    loss = {(r["spec"]["variant"]["name"], r["spec"]["seed"]): r["val_loss"] for r in runs}
    var = []
    for name in ("satformer", "static"):
        d = [loss[name, s] - loss["baseline", s] for s in range(3)]
        m = sum(d) / 3
        var.append(sum((x - m) ** 2 for x in d) / 2)
    assert f"SD ≈ {math.sqrt(sum(var) / 2):.3f}" in noise_note(noise)
    results = [RunResult(n, 1000, loss[n, 0], 1.0) for n in ("baseline", "satformer", "static")]
    table = format_table(results, noise=noise)
    assert "Δ 3 seeds" in table and "tok/s" not in table
    sat = noise["satformer"]["delta"]
    assert f"{sat['mean']:+.3f}±{sat['half_width']:.3f}" in table.splitlines()[2]
    assert "not measured" in noise_note(None) and "recipes.bench" in noise_note(None)


def test_lm_only_variants_skip_mqar_and_mixed_settings_are_refused(tmp_path):
    mqar = Task(replace(TRAIN, seq_len=16), MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2))
    cfg = replace(_cfg(seeds=(0,), variants=("baseline", "satformer", "satformer-sigmoid")), mqar=mqar,
                  lm_only=("satformer-sigmoid",))
    cells = [(s["task"], s["variant"]["name"]) for s in study.plan(cfg)]
    assert ("lm", "satformer-sigmoid") in cells and ("mqar", "satformer-sigmoid") not in cells and len(cells) == 5
    with pytest.raises(ValueError, match="lm_only must name non-baseline variants"):
        replace(cfg, lm_only=("baseline",))
    assert cfg.override(variants=["baseline", "satformer"]).lm_only == ()
    study.run_study(_cfg(seeds=(0,)), tmp_path, progress=False)
    runs = study.run_study(_cfg(steps=5, seeds=(0,)), tmp_path, progress=False)
    assert len(runs) == 2 and len(load_runs(tmp_path / "runs.jsonl")) == 4
    from recipes.experiments.study_report import write_report

    assert write_report(tmp_path, runs=runs)["lm"]["budget"]["steps"] == 5
    with pytest.raises(ValueError, match="mixes studies"):
        study.main(["--report-only", "--out", str(tmp_path), "--no-plots"])


def test_demo_preset_runs_exactly_the_demo():
    """--preset demo measures the noise of the demo's own settings (models, budget, data), per seed."""
    from recipes.eval.mqar import DEMO_MODEL, DEMO_TASK, DEMO_TRAIN, mqar_model_config
    from recipes.experiments.study_config import demo_preset
    from recipes.lm.config import ModelConfig

    specs = study.plan(demo_preset())
    assert len(specs) == 4 * 2 * len(PAPER_STRATEGIES)
    for spec in specs:
        name, seed, model = spec["variant"]["name"], spec["seed"], ModelConfig(**spec["model"])
        if spec["task"] == "lm":
            assert model == model_config("tiny", name) and spec["corpus_bytes"] == 4_000_000
            assert TrainConfig(**spec["train"]) == TrainConfig(seed=seed)
        else:
            assert model == mqar_model_config(name, DEMO_TASK, **DEMO_MODEL)
            assert TrainConfig(**spec["train"]) == replace(DEMO_TRAIN, seed=seed)
            assert MQARConfig(**spec["mqar"]) == DEMO_TASK


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the committed LM runs used Python 3.11's stdlib as corpus")
@pytest.mark.parametrize("preset", ["published", "demo"])
def test_committed_results_are_the_presets_runs(preset):
    """docs/results holds a finished run for every run the preset defines today: a change to a
    preset, a model default or the training recipe that alters any run's spec fails here until the
    study is rerun (it resumes, running only the changed runs) and its results committed."""
    out = Path(__file__).resolve().parents[1] / study.DEFAULT_OUT[preset]
    done = {run["key"] for run in load_runs(out / "runs.jsonl")}
    missing = [(s["task"], s["variant"]["name"], s["seed"]) for s in study.plan(PRESETS[preset]()) if study.spec_key(s) not in done]
    assert not missing, f"rerun `python -m recipes.experiments.study --preset {preset}`: {missing[:5]}..."


def test_added_model_fields_at_their_neutral_value_keep_the_keys(monkeypatch):
    """A ModelConfig field added after runs were committed leaves their keys alone at the value that
    reproduces them, and enters the key (and the rebuilt model) at any other value."""
    cfg = PRESETS["smoke"]()
    # the keys of a version of the project before the field existed
    older = [{**s, "model": {k: v for k, v in s["model"].items() if k != "tie_embeddings"}} for s in study.plan(cfg)]
    before = [study.spec_key(s) for s in older]
    monkeypatch.setattr(study, "ADDED_FIELDS", {**study.ADDED_FIELDS, "tie_embeddings": True})
    specs = study.plan(cfg)
    assert [study.spec_key(s) for s in specs] == before  # the smoke models tie: the neutral value
    assert all("tie_embeddings" not in s["model"] for s in specs)
    task = cfg.tasks[specs[0]["task"]]
    assert ModelConfig(**specs[0]["model"]) == study_model_config(cfg.variants[0], cfg.shape, 256, task.max_seq_len)
    monkeypatch.setattr(study, "ADDED_FIELDS", {**study.ADDED_FIELDS, "tie_embeddings": False})
    assert not set(study.spec_key(s) for s in study.plan(cfg)) & set(before)


def test_end_of_run_evals_are_recorded_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setattr("recipes.experiments.study_run.EVAL_WINDOWS", 4)
    monkeypatch.setattr("recipes.experiments.study_run.EVAL_SEQ_LEN", 16)
    plain = _cfg(seeds=(0,))
    cfg = replace(plain, lm=replace(plain.lm, evals=("domains", "probe", "gates")))
    specs = study.plan(cfg)
    assert all(s["evals"] == {"names": ["domains", "probe", "gates"], "version": study.EVALS_VERSION}
               for s in specs if s["task"] == "lm")
    assert "evals" not in study.plan(plain)[0]  # runs without evals keep their keys
    runs = {r["spec"]["variant"]["name"]: r for r in study.run_study(cfg, tmp_path, progress=False) if r["spec"]["task"] == "lm"}
    for run in runs.values():
        assert set(run["domains"]) >= {"val", "prose", "skipped"} and all(
            0 < run["domains"][d] < 12 for d in ("val", "prose"))
        assert len(run["probe"]["accuracy"]) == cfg.shape.n_layers + 1
    assert "gates" in runs["satformer"] and "gates" not in runs["baseline"]
    assert runs["satformer"]["gates"]["gated_layers"] == list(range(1, cfg.shape.n_layers))
    fresh = study.run_one(specs[0])  # the same numbers again
    assert fresh["domains"] == runs[specs[0]["variant"]["name"]]["domains"]
    assert fresh["probe"] == runs[specs[0]["variant"]["name"]]["probe"]
    with pytest.raises(ValueError, match="evals must be distinct names among"):
        replace(plain.lm, evals=("domains", "perplexity"))
    with pytest.raises(ValueError, match="an MQAR task takes none"):
        Task(TRAIN, MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2), evals=("probe",))


def test_variant_model_overrides_build_and_enter_the_spec_only_when_set():
    from recipes.experiments.study_config import Variant

    v = Variant("untied", "baseline", model={"tie_embeddings": False})
    assert study_model_config(v, Shape(32, 2, 2, 1), 256, 16).tie_embeddings is False
    cfg = _cfg(seeds=(0,))
    assert all("model" not in s["variant"] for s in study.plan(cfg))
    with pytest.raises(ValueError, match=r"model overrides cannot set \['n_layers'\]"):
        Variant("deep", "baseline", model={"n_layers": 3})


def _sweep_run(lr, loss):
    return {"spec": {"train": {"lr": lr}}, "val_loss": loss}


def test_sweep_winner_and_the_ladder_presets(monkeypatch):
    from recipes.experiments import study_config as sc

    runs = [_sweep_run(lr, loss) for lr, loss in ((3e-4, 2.5), (3e-4, 2.5), (1e-3, 2.0), (1e-3, 2.2), (3e-3, 1.9),
                                                  (3e-3, 2.0), (1e-2, 1.8))]
    with pytest.raises(ValueError, match=r"the sweep is unfinished: learning rates \[0.01\]"):
        sc.sweep_winner(runs)
    assert sc.sweep_winner([*runs, _sweep_run(1e-2, 2.3)]) == 3e-3  # means 2.1, 1.95, 2.05
    assert sc.sweep_winner([*runs, _sweep_run(1e-2, 1.9)]) == 1e-2
    monkeypatch.setattr(sc, "LADDER_LR", None)
    with pytest.raises(ValueError, match="run the sweep-lr\\* presets first"):
        PRESETS["ladder-1000"]()
    monkeypatch.setattr(sc, "LADDER_LR", 3e-3)
    for steps, (variants, seeds) in sc.LADDER_RUNGS.items():
        cfg = PRESETS[f"ladder-{steps}"]()
        assert cfg.lm.train.steps == steps and cfg.lm.train.lr == 3e-3 and cfg.lm.train.warmup == steps // 10
        assert [v.name for v in cfg.variants] == list(variants) and cfg.seeds == seeds
        assert cfg.lm.evals == sc.LM_EVALS and cfg.mqar is None
    forms = PRESETS["ladder-1000-forms"]()
    assert [v.name for v in forms.variants] == list(sc.LADDER_FORMS) and forms.seeds == (0, 1, 2)
    shared = {study.spec_key(s) for s in study.plan(forms) if s["variant"]["name"] == "baseline"}
    assert shared <= {study.spec_key(s) for s in study.plan(PRESETS["ladder-1000"]())}  # baseline runs reused
    models = {s["variant"]["name"]: s["model"] for s in study.plan(PRESETS["ladder-1000"]()) if s["seed"] == 0}
    assert models["layernorm-scaling"]["layernorm_scaling"] is True and "peri_norm" not in models["layernorm-scaling"]
    assert models["peri-ln"]["peri_norm"] is True and "layernorm_scaling" not in models["baseline"]


def test_the_ladder_lr_is_the_committed_sweeps_winner():
    from recipes.experiments import study_config as sc

    if sc.LADDER_LR is None:
        pytest.skip("the learning-rate sweep has not finished yet (LADDER_LR unset)")
    root = Path(__file__).resolve().parents[1]
    runs = [r for lr in sc.SWEEP_LRS for r in load_runs(root / study.DEFAULT_OUT[f"sweep-lr{lr}"] / "runs.jsonl")]
    assert sc.LADDER_LR == sc.sweep_winner(runs)
