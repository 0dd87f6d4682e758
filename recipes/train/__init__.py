"""Training: what every loop shares (:mod:`~recipes.train.optim`: optimiser, schedule, loss, one
step, the loop), pretraining (:mod:`~recipes.train.pretrain`, :mod:`~recipes.train.pretrain_config`) and
checkpoints (:mod:`~recipes.train.checkpoint`)."""

from recipes.train.optim import (
    DECAY_RULES,
    OptimConfig,
    TrainConfig,
    chunked_lm_loss,
    fit,
    lm_loss,
    lr_at,
    make_optimizer,
    train_step,
)

__all__ = [
    "DECAY_RULES", "OptimConfig", "TrainConfig", "chunked_lm_loss", "fit", "lm_loss", "lr_at", "make_optimizer",
    "train_step",
]
