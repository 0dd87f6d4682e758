"""One run of a study: train the model a spec describes on its task and evaluate it."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from recipes.lm.config import ModelConfig
from recipes.data import embedded_corpus, random_batch
from recipes.eval.analyze import analyze_gates
from recipes.eval.domains import evaluate_domains, window_starts
from recipes.eval.mqar import MQARConfig, evaluate_mqar, model_mqar_loss, mqar_batch
from recipes.eval.probe import lexical_probe
from recipes.experiments.demo import evaluate
from recipes.lm.model import CausalLM
from recipes.train.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint, save_checkpoint
from recipes.train.loop import TrainConfig, fit
from recipes.train.loss import lm_loss
from recipes.train.optim import make_optimizer
from value_routing.strategies import SelectiveGate


@functools.lru_cache(maxsize=2)
def _corpus(max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return embedded_corpus(max_bytes)


def _window_ends(steps: int, points: int) -> range:
    """Last step (1-based) of each of ``points`` equal windows over ``steps`` (fewer if steps < points)."""
    size = max(1, steps // points)
    return range(size, steps + 1, size)


def _windows(losses: list[float], points: int) -> list[list[float]]:
    """``[last step, mean loss]`` of the windows of :func:`_window_ends`."""
    ends = _window_ends(len(losses), points)
    return [[end, sum(losses[end - ends.step : end]) / ends.step] for end in ends]


#: Fixed budgets of the end-of-run evaluations: windows of EVAL_SEQ_LEN bytes per domain and for the probe.
EVAL_WINDOWS, EVAL_SEQ_LEN = 64, 128


def end_evals(model: CausalLM, val: torch.Tensor, evals: Sequence[str]) -> dict[str, Any]:
    """The evaluations ``evals`` names (:data:`~recipes.experiments.study_config.LM_EVALS`) of a trained
    LM: ``domains`` (bits/byte per domain), ``probe`` (accuracy by depth × offset on the validation
    split), ``gates`` (SATFormer's gate statistics on validation windows; skipped for other strategies)."""
    out: dict[str, Any] = {}
    if "domains" in evals:
        out["domains"] = evaluate_domains(model, val, EVAL_SEQ_LEN, EVAL_WINDOWS)
    if "probe" in evals:
        out["probe"] = lexical_probe(model, val, EVAL_SEQ_LEN, EVAL_WINDOWS)
    if "gates" in evals and isinstance(model.strategy, SelectiveGate):
        starts = window_starts(len(val), EVAL_SEQ_LEN - 1, EVAL_WINDOWS)
        out["gates"] = analyze_gates(model, torch.stack([val[s : s + EVAL_SEQ_LEN] for s in starts]).long())
    return out


def _generator_state(gen: torch.Generator) -> str:
    """The data generator's state as hex text (it goes into the checkpoint's ``state.json``)."""
    return bytes(gen.get_state().tolist()).hex()


def _set_generator_state(gen: torch.Generator, state: str) -> None:
    gen.set_state(torch.tensor(list(bytes.fromhex(state)), dtype=torch.uint8))


def execute(spec: dict[str, Any], partial: str | Path | None = None, every: int = 0) -> dict[str, Any]:
    """Train ``spec["model"]`` with ``spec["train"]`` on ``spec["task"]``, on one thread.

    The seed alone fixes the initial weights and the data order, whatever the variant.
    Returns the metric (``val_loss`` or ``accuracy``), the training-loss ``curve``
    (``[step, mean loss over the window ending there]``), ``params`` and training ``seconds``;
    MQAR runs also the ``accuracy_curve`` (``[step, held-out accuracy]`` at every window's end,
    ``seconds`` including these evaluations); LM runs whose spec lists ``evals`` also what
    :func:`end_evals` returns.

    With ``partial`` (a directory) and ``every > 0`` the run saves a training checkpoint there every
    ``every`` steps (:func:`recipes.train.checkpoint.save_checkpoint`: model, optimiser and global
    RNG, checksummed; ``state.json`` also holds the spec, the data generator's state, the losses,
    the MQAR accuracies and the seconds so far; the newest one is kept) and, if one exists, resumes
    from it; a resumed run returns exactly what an uninterrupted one does (``seconds`` sums the
    training time of every part). The caller removes the directory once the result is safely stored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # results independent of --workers (and no oversubscription)
    try:
        model_cfg, cfg = ModelConfig(**spec["model"]), TrainConfig(**spec["train"])
        torch.manual_seed(cfg.seed)
        model = CausalLM(model_cfg)
        opt = make_optimizer(model, cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
        if spec["task"] == "lm":
            train, val = _corpus(spec["corpus_bytes"])
            next_batch, loss_fn = (lambda: random_batch(train, cfg.batch_size, cfg.seq_len, gen)), lm_loss
        else:
            task = MQARConfig(**spec["mqar"])
            next_batch, loss_fn = (lambda: mqar_batch(task, cfg.batch_size, gen)), model_mqar_loss
        accuracy_curve: list[list[float]] = []
        losses: list[float] = []
        before = 0.0  # training seconds of the earlier parts of a resumed run
        path = Path(partial) if partial is not None and every > 0 else None
        spec_json = json.dumps(spec, sort_keys=True)  # identifies the run a checkpoint belongs to
        last = latest_checkpoint(path) if path is not None and path.is_dir() else None
        if last is not None:
            if json.loads((last / STATE_FILE).read_text()).get("spec") != spec_json:
                raise ValueError(f"partial: {str(path)!r} holds a checkpoint of another run")
            state = load_checkpoint(last, model, opt)  # checksums verified; global RNG restored
            _set_generator_state(gen, state["gen"])
            losses, accuracy_curve, before = list(state["losses"]), [list(p) for p in state["accuracy_curve"]], state["seconds"]
        ends = set(_window_ends(cfg.steps, spec["curve_points"]))
        start = time.perf_counter()

        def after_step(n: int) -> None:
            if spec["task"] == "mqar" and n in ends:  # held-out accuracy where each loss window ends (own RNG)
                accuracy_curve.append([n, evaluate_mqar(model, task, batches=cfg.eval_batches)])
            if path is not None and n % every == 0 and n < cfg.steps:
                save_checkpoint(path, n, model, opt, keep=1, model_config=spec["model"], state={
                    "spec": spec_json, "gen": _generator_state(gen), "losses": losses,
                    "accuracy_curve": accuracy_curve, "seconds": before + time.perf_counter() - start})

        fit(model, opt, cfg, next_batch, loss_fn, after_step=after_step, losses=losses)
        seconds = before + time.perf_counter() - start
        if spec["task"] == "lm":
            metric: dict[str, Any] = {"val_loss": evaluate(model, val, cfg), **end_evals(model, val, spec["evals"]["names"] if "evals" in spec else ())}
        else:
            metric = {"accuracy": evaluate_mqar(model, task, batches=cfg.eval_batches),
                      "accuracy_curve": accuracy_curve}
        return {**metric, "curve": _windows(losses, spec["curve_points"]), "params": model.num_params(),
                "seconds": seconds}
    finally:
        torch.set_num_threads(threads)
