"""The one optimiser step every loop takes (:func:`train_step`) and the small loop around it
(:func:`fit`, with its :class:`TrainConfig`).

:func:`fit` drives the demo (:mod:`recipes.experiments.demo`), MQAR (:mod:`recipes.eval.mqar`) and
the study; pretraining (:mod:`recipes.train.pretrain`) calls :func:`train_step` itself with its
micro-batches and a :class:`MicroStep` (gradient sync, autocast, device). So the schedule, the
averaging over micro-batches and the clip are written once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from recipes.lm.checks import check_min
from recipes.train.loss import lm_loss
from recipes.train.optim import OptimConfig, lr_at

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig(OptimConfig):
    """One run of the demo (or of :mod:`recipes.eval.mqar`): optimisation, batch shape, evaluation."""

    batch_size: int = 16
    seq_len: int = 128
    eval_batches: int = 16
    seed: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min(self, 1, "batch_size", "seq_len", "eval_batches")


def _no_sync_needed(last: bool) -> AbstractContextManager:
    return nullcontext()


@dataclass(frozen=True)
class MicroStep:
    """How each micro-batch of a step runs; the defaults (one process, no autocast, batches where
    they are) are the demo's.

    ``sync(last)`` wraps a micro-batch's forward and backward, told whether it is the step's last
    (DDP's ``no_sync`` / FSDP's gradient sync on the last only); ``autocast()`` wraps the forward
    alone; ``device``, if set, is where each micro-batch is moved first.
    """

    sync: Callable[[bool], AbstractContextManager] = _no_sync_needed
    autocast: Callable[[], AbstractContextManager] = nullcontext
    device: torch.device | None = None


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, cfg: OptimConfig,
               batches: Sequence[Batch], loss_fn=lm_loss, micro: MicroStep = MicroStep()) -> torch.Tensor:
    """One optimiser step at ``lr_at(step, cfg)`` on the mean gradient of ``batches``.

    Each micro-batch's loss is divided by ``len(batches)`` before its backward, so the accumulated
    gradient is the mean's (as one batch of all the rows would give); it is clipped to a norm of
    ``cfg.grad_clip``, the optimiser steps and the gradients are dropped. Returns the mean loss
    (detached, float32).
    """
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    n, total = len(batches), None
    for m, (x, y) in enumerate(batches):
        if micro.device is not None:
            x, y = x.to(micro.device, non_blocking=True), y.to(micro.device, non_blocking=True)
        with micro.sync(m == n - 1):
            with micro.autocast():
                loss = loss_fn(model, x, y)
            (loss / n).backward()
        total = loss.detach().float() if total is None else total + loss.detach().float()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total / n


def fit(model, opt, cfg: TrainConfig, next_batch: Callable[[], Batch], loss_fn=lm_loss, desc: str | None = None,
        after_step: Callable[[int], None] | None = None, losses: list[float] | None = None) -> list[float]:
    """``cfg.steps`` calls of :func:`train_step` on one batch ``next_batch()`` each; returns every
    step's loss.

    ``desc`` shows a progress bar with that label and the current loss. ``after_step(n)`` is called
    after the ``n``-th step (1-based), e.g. to evaluate along training. ``losses``, the losses of
    steps already taken (a resumed run, its model, optimiser and data restored by the caller), makes
    the loop start at step ``len(losses)``; each new step's loss is appended to that same list.
    """
    losses = [] if losses is None else losses
    if len(losses) > cfg.steps:
        raise ValueError(f"losses: {len(losses)} steps already taken, more than steps={cfg.steps}")
    bar = tqdm(range(len(losses), cfg.steps), desc=desc, leave=False, mininterval=1.0, disable=desc is None)
    for step in bar:
        losses.append(train_step(model, opt, step, cfg, [next_batch()], loss_fn).item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if after_step is not None:
            after_step(step + 1)
    return losses
