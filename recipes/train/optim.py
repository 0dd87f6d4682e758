"""The optimiser and its schedule, shared by every training loop: AdamW with its decay rule and
linear warmup + cosine decay.

The demo (:mod:`recipes.experiments.demo`), pretraining (:mod:`recipes.train.pretrain`), MQAR
(:mod:`recipes.eval.mqar`), the study and the benchmarks all build their optimiser here, so a
change to the recipe reaches all of them at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recipes.lm.checks import check_choice, check_min

#: Which parameters AdamW decays: matrices only (ours) or all (the SATFormer authors' code).
DECAY_RULES: tuple[str, ...] = ("matrices", "all")


@dataclass(frozen=True)
class OptimConfig:
    """The schedule and AdamW settings :func:`lr_at` and :func:`make_optimizer` read, and the
    gradient clip of :func:`recipes.train.loop.train_step`; the base of
    :class:`recipes.train.loop.TrainConfig` and :class:`recipes.train.pretrain_config.PretrainConfig`.

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
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1] (the cosine's floor as a fraction of lr), "
                             f"got {self.min_lr_ratio}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        # inf is allowed: clip_grad_norm_ with an infinite bound leaves the gradients as they are
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (inf: no clipping), got {self.grad_clip}")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup must be in [0, steps) = [0, {self.steps}), got {self.warmup}")


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
