"""Training: the optimiser and schedule (:mod:`~recipes.train.optim`), the LM losses
(:mod:`~recipes.train.loss`), the one train step and the loop around it (:mod:`~recipes.train.loop`),
pretraining (:mod:`~recipes.train.pretrain`, :mod:`~recipes.train.pretrain_config`) and checkpoints
(:mod:`~recipes.train.checkpoint`, :mod:`~recipes.train.integrity`)."""

from recipes.train.loop import MicroStep, TrainConfig, fit, train_step
from recipes.train.loss import chunked_lm_loss, lm_loss
from recipes.train.optim import DECAY_RULES, OptimConfig, lr_at, make_optimizer

__all__ = [
    "DECAY_RULES", "MicroStep", "OptimConfig", "TrainConfig", "chunked_lm_loss", "fit", "lm_loss", "lr_at",
    "make_optimizer", "train_step",
]
