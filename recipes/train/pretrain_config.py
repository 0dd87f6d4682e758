"""Configuration of :mod:`recipes.train.pretrain`: per-size optimisation defaults, the frozen run
config, resolving command-line arguments against the defaults, and checking the result (model,
data paths, tokenizer) before anything is trained."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Mapping

from recipes.lm.builders import SIZES, model_config
from recipes.lm.config import ModelConfig
from recipes.data.shards import SHARD_FORMATS, TokenWindows
from recipes.train.optim import OptimConfig
from recipes.lm.checks import check_choice, check_min
from recipes.lm.cli import check_writable, flags_of, non_negative_float, non_negative_int, positive_float, positive_int, user_errors
from value_routing.strategies import STRATEGIES

#: Values of ``PretrainConfig.parallel``.
PARALLEL = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class SizeDefaults:
    """Optimisation defaults of one model size: AdamW β=(0.9, 0.95), ε=1e-8 (``make_optimizer``),
    weight decay ``weight_decay`` on ``decay`` parameters, clip 1.0, linear warmup then cosine
    to ``min_lr_ratio · lr``.

    The batch is ``micro_batch × grad_accum`` sequences per rank when both are set (the
    paper sizes: the authors' per-GPU values), else about ``global_batch_tokens`` over all
    ranks. Warmup is ``warmup_tokens`` when set, else ``warmup_frac`` of the steps; the number of
    steps is ``train_tokens`` over the tokens of one step (both rounded down, as the authors do).
    """

    lr: float
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.012
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seq_len: int = 4096
    global_batch_tokens: int = 2**19
    train_tokens: int = 20_000_000_000
    micro_batch: int | None = None
    grad_accum: int | None = None
    warmup_tokens: int | None = None
    decay: str = "all"


def _paper(lr: float, micro_batch: int, grad_accum: int, billions: int) -> SizeDefaults:
    """The authors' config of one size: warmup 1 % of ``billions`` B training tokens."""
    return SizeDefaults(lr=lr, micro_batch=micro_batch, grad_accum=grad_accum,
                        warmup_tokens=billions * 10**7, train_tokens=billions * 10**9)


#: ``tiny``: our CPU demo. ``small`` … ``xl``: the SATFormer authors' public configs
#: (lr → lr/10, per-GPU batch × accumulation, warmup / total tokens 0.05B/5B … 0.3B/30B,
#: sequence 4096, weight decay 0.1 on all parameters).
DEFAULTS: dict[str, SizeDefaults] = {
    "tiny": SizeDefaults(lr=3e-3, warmup_frac=0.1, seq_len=128, global_batch_tokens=2048, train_tokens=300 * 2048,
                         decay="matrices"),
    "small": _paper(2e-3, 64, 1, 5),
    "medium": _paper(1.5e-3, 32, 2, 10),
    "large": _paper(1e-3, 16, 4, 20),
    "xl": _paper(8e-4, 8, 8, 30),
}


@dataclass(frozen=True)
class PretrainConfig(OptimConfig):
    """One pretraining run. ``steps`` spans the lr schedule; ``stop_after`` may end the job earlier."""

    size: str = "tiny"
    strategy: str = "satformer"
    parallel: str = "none"
    data: str = "embedded"
    val_data: str | None = None
    shard_format: str = "auto"
    tokenizer: str | None = None
    steps: int = 300
    stop_after: int | None = None
    micro_batch: int = 16
    grad_accum: int = 1
    seq_len: int = 128
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    chunked_ce: bool = True
    activation_checkpointing: bool = True
    ckpt_dir: str | None = None
    ckpt_every: int = 0
    keep: int = 3
    resume: bool = False
    eval_every: int = 0
    eval_batches: int = 8
    log_every: int = 10
    log_file: str | None = None
    model_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, allowed in (("size", SIZES), ("strategy", STRATEGIES), ("parallel", PARALLEL),
                              ("shard_format", SHARD_FORMATS), ("device", ("auto", "cpu", "cuda"))):
            check_choice(self, name, allowed)
        check_min(self, 1, "micro_batch", "grad_accum", "seq_len", "keep", "eval_batches", "log_every")
        check_min(self, 0, "ckpt_every", "eval_every")
        super().__post_init__()
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ValueError(f"stop_after must be None or in [1, steps] = [1, {self.steps}], got {self.stop_after}")
        if self.resume and not self.ckpt_dir:
            raise ValueError("resume needs ckpt_dir (the directory of the checkpoints to resume from)")


#: Options filled from :data:`DEFAULTS` of the size when not given on the command line.
SIZED = ("steps", "micro_batch", "grad_accum", "seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip",
         "decay")
HELP = {
    "size": "model size; options left unset come from DEFAULTS[size]",
    "data": "'embedded' or a glob/directory of uint16 .bin shards", "val_data": "glob/directory of validation shards",
    "tokenizer": "'byte' or a local tokenizer.json (sets vocab_size)", "steps": "length of the lr schedule",
    "stop_after": "stop after this step (the schedule still spans --steps)", "amp": "bf16 autocast on CUDA",
    "resume": "continue from the newest intact checkpoint in --ckpt-dir, if any (damaged newer ones are skipped)", "keep": "checkpoints to keep",
    "log_file": "JSON lines with the exact loss of every step",
    "chunked_ce": "LM head + cross-entropy in token chunks: never hold the (batch, seq, vocab) logits (default on)",
    "activation_checkpointing": "recompute each block in backward instead of keeping its activations (default on)",
    "decay": "parameters weight decay applies to: 'matrices' (2-D and up) or 'all'",
}


#: Command-line types of the numeric options (a 0 or negative count is refused, never "unset").
NUMBER_TYPES = {
    **dict.fromkeys(("steps", "stop_after", "micro_batch", "grad_accum", "seq_len", "keep", "eval_batches",
                     "log_every"), positive_int),
    **dict.fromkeys(("warmup", "seed", "ckpt_every", "eval_every"), non_negative_int),
    "lr": positive_float, "grad_clip": positive_float,
    "min_lr_ratio": non_negative_float, "weight_decay": non_negative_float,
}


def resolve(args: argparse.Namespace, world: int) -> PretrainConfig:
    """A :class:`PretrainConfig` from parsed arguments, unset (``None``) options taken from :data:`DEFAULTS`.

    A given 0 is a value (refused by :class:`PretrainConfig` where counts are >= 1), never "unset".
    ``args.model_overrides`` holds ``(field, value)`` pairs, as ``--set`` parses them.
    """
    d, given = DEFAULTS[args.size], vars(args)
    seq_len = d.seq_len if args.seq_len is None else args.seq_len
    micro = (d.micro_batch or max(1, min(16, d.global_batch_tokens // (seq_len * world)))
             if args.micro_batch is None else args.micro_batch)
    accum = (d.grad_accum or max(1, d.global_batch_tokens // (seq_len * world * micro))
             if args.grad_accum is None else args.grad_accum)
    step_tokens = seq_len * world * micro * accum
    steps = max(1, d.train_tokens // step_tokens) if args.steps is None else args.steps
    if args.warmup is not None:
        warmup = args.warmup
    elif d.warmup_tokens is not None:
        warmup = min(steps - 1, d.warmup_tokens // step_tokens)
    else:
        warmup = min(steps - 1, round(d.warmup_frac * steps))
    sized = {k: getattr(d, k) if given[k] is None else given[k]
             for k in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "decay")}
    return PretrainConfig(**{
        **given, **sized, "steps": steps, "micro_batch": micro, "grad_accum": accum, "seq_len": seq_len,
        "warmup": warmup, "model_overrides": dict(args.model_overrides),
    })


def tokenizer_vocab_size(cfg: PretrainConfig) -> int | None:
    """The vocabulary size of ``cfg.tokenizer`` (None: none given); FileNotFoundError for a missing file."""
    if cfg.tokenizer is None:
        return None
    from recipes.data.tokenizers import load_tokenizer

    return load_tokenizer(cfg.tokenizer).vocab_size


def pretrain_model_config(cfg: PretrainConfig, vocab_size: int | None = None) -> ModelConfig:
    """The run's model: ``cfg.size``/``cfg.strategy`` with ``--set`` overrides (``vocab_size``, when
    not overridden, from the tokenizer)."""
    overrides = dict(cfg.model_overrides)
    if "strategy" in overrides:  # model_config takes it as its own argument
        raise ValueError(f"strategy is chosen with --strategy, not --set (got strategy={overrides['strategy']!r})")
    if vocab_size is not None:
        overrides.setdefault("vocab_size", vocab_size)
    overrides.setdefault("activation_checkpointing", cfg.activation_checkpointing)
    return model_config(cfg.size, cfg.strategy, **overrides)


def check_seq_len(cfg: PretrainConfig, model_cfg: ModelConfig) -> None:
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"seq_len must be <= max_seq_len = {model_cfg.max_seq_len} (--set max_seq_len=N), "
                         f"got {cfg.seq_len}")


def checked_config(parser: argparse.ArgumentParser, args: argparse.Namespace, world: int) -> PretrainConfig:
    """The run's config, its model config and data paths checked: a user error is ``parser.error``
    (exit status 2) naming the flag, before anything is trained."""
    flags = flags_of(parser)
    with user_errors(parser, flags):
        cfg = resolve(args, world)
    for name in ("data", "val_data"):
        path = getattr(cfg, name)
        if path is not None and not (name == "data" and path == "embedded"):
            with user_errors(parser, flag=flags[name]):  # the shards open and hold a window each
                TokenWindows.from_shards(path, cfg.seq_len, shuffle=False, fmt=cfg.shard_format)
    for name, kind in (("ckpt_dir", "directory"), ("log_file", "file")):
        if getattr(cfg, name) is not None:
            with user_errors(parser, flag=flags[name]):
                check_writable(getattr(cfg, name), kind)
    with user_errors(parser, flag=flags["tokenizer"]):
        vocab_size = tokenizer_vocab_size(cfg)
    with user_errors(parser, flag=flags["model_overrides"]):
        model_cfg = pretrain_model_config(cfg, vocab_size)
    with user_errors(parser, flags):
        check_seq_len(cfg, model_cfg)
    return cfg
