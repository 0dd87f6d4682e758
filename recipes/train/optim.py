"""What every training loop shares: the AdamW set-up, the warmup + cosine schedule, the LM loss and
one optimiser step.

The demo (:mod:`recipes.train.demo`), pretraining (:mod:`recipes.train.pretrain`), MQAR
(:mod:`recipes.eval.mqar`), the study and the benchmarks all train through these, so a change to the
recipe reaches all of them at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from recipes.lm.checks import check_choice, check_min

#: Which parameters AdamW decays: matrices only (ours) or all (the SATFormer authors' code).
DECAY_RULES: tuple[str, ...] = ("matrices", "all")


@dataclass(frozen=True)
class OptimConfig:
    """The schedule and AdamW settings :func:`lr_at` and :func:`make_optimizer` read; the base of
    :class:`TrainConfig` and :class:`recipes.train.pretrain_config.PretrainConfig`.

    ``decay`` names the parameters weight decay applies to (:data:`DECAY_RULES`).
    """

    steps: int = 250
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    decay: str = "matrices"

    def __post_init__(self) -> None:
        check_min(self, 1, "steps")
        check_choice(self, "decay", DECAY_RULES)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup must be in [0, steps) = [0, {self.steps}), got {self.warmup}")


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


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW, β = (0.9, 0.95), ε = 1e-8, with weight decay on matrices only (not norms, gains or
    scalar λ) or, with ``cfg.decay == "all"``, on every parameter."""
    everything = cfg.decay == "all"
    decay = [p for p in model.parameters() if everything or p.ndim >= 2]
    no_decay = [p for p in model.parameters() if not everything and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy from the full ``(batch, seq, vocab)`` logits."""
    logits = model(x).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def chunked_lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`lm_loss` with the LM head fused into the loss, in token chunks: the logits never exist.

    Goes through the model's ``forward`` (``targets=``), so DDP / FSDP wrappers see the call.
    """
    return model(x, targets=y)


def train_step(model, opt, step: int, cfg: TrainConfig, batch, loss_fn=lm_loss) -> torch.Tensor:
    """One optimiser step on ``batch = (inputs, targets)`` at the scheduled lr; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    loss = loss_fn(model, *batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss


def fit(model, opt, cfg: TrainConfig, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        loss_fn=lm_loss, desc: str | None = None, after_step: Callable[[int], None] | None = None) -> list[float]:
    """``cfg.steps`` calls of :func:`train_step` on ``next_batch()``; returns every step's loss.

    ``desc`` shows a progress bar with that label and the current loss. ``after_step(n)`` is called
    after the ``n``-th step (1-based), e.g. to evaluate along training.
    """
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=desc, leave=False, mininterval=1.0, disable=desc is None)
    for step in bar:
        losses.append(train_step(model, opt, step, cfg, next_batch(), loss_fn).item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if after_step is not None:
            after_step(step + 1)
    return losses
