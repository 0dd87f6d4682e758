"""Pretraining entry point: one process, DDP or FSDP2, resumable from atomic checkpoints.

::

    python -m recipes.train.pretrain --config small --strategy satformer --data 'fineweb10B/*train*.bin'
    torchrun --nproc_per_node 8 -m recipes.train.pretrain --config small --parallel fsdp \\
        --data 'fineweb10B/*train*.bin' --val-data 'fineweb10B/*val*.bin' --ckpt-dir ckpt --resume

Data is the embedded stdlib corpus (bytes; the default) or pre-tokenized uint16 ``.bin``
shards (:mod:`recipes.data.shards`). Sample ``k`` of the stream is fixed by ``--seed``, so the
data position saved in a checkpoint is one integer. Rank ``r`` trains on rows
``[r·B, (r+1)·B)`` of every global batch (``B = micro_batch · grad_accum``), so any world
size sees the same global batch. bf16 autocast is used on CUDA only (fp32 on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from recipes.lm.builders import SIZES
from recipes.lm.cli import dataclass_override
from recipes.lm.config import ModelConfig
from recipes.train.checkpoint import load_checkpoint, resumable_checkpoint, save_checkpoint
from recipes.data import embedded_corpus
from recipes.lm.model import CausalLM
from recipes.data.shards import SHARD_FORMATS, TokenWindows
from recipes.train.pretrain_config import (DEFAULTS, HELP, NUMBER_TYPES, PARALLEL, SIZED, PretrainConfig, SizeDefaults,
                                           check_seq_len, checked_config, pretrain_model_config, resolve,
                                           tokenizer_vocab_size)
from recipes.train.loop import MicroStep, train_step
from recipes.train.loss import chunked_lm_loss, lm_loss
from recipes.train.optim import DECAY_RULES, lr_at, make_optimizer
from value_routing.strategies import STRATEGIES

__all__ = ["DEFAULTS", "PretrainConfig", "SizeDefaults", "main", "parse_args", "resolve", "train"]

class Dist:
    """Rank, world size and device of this process; initialises the process group if asked."""

    def __init__(self, parallel: str, device: str) -> None:
        self.owns_group = False
        if parallel != "none" and not dist.is_initialized():
            if "RANK" not in os.environ:  # plain `python -m`: a world of one
                os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=str(_free_port()))
            use_cuda = device != "cpu" and torch.cuda.is_available()
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.owns_group = True
        elif parallel == "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("parallel must be 'ddp' or 'fsdp' when launched on several ranks, got 'none'")
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if parallel != "none" else (0, 1)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)

    def _summed(self, value: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and self.world > 1:
            value = value.clone()
            dist.all_reduce(value)  # SUM: gloo has no AVG
        return value

    def sum(self, value: torch.Tensor) -> float:
        """``value`` summed over the ranks."""
        return self._summed(value).item()

    def mean(self, value: torch.Tensor) -> float:
        """``value`` averaged over the ranks."""
        return (self._summed(value) / self.world).item()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_data(cfg: PretrainConfig) -> tuple[TokenWindows, TokenWindows | None]:
    """Training windows (shuffled by seed) and validation windows (fixed order)."""
    if cfg.data == "embedded":
        train, val = embedded_corpus()
        return TokenWindows([train], cfg.seq_len, cfg.seed), TokenWindows([val], cfg.seq_len, shuffle=False)
    train = TokenWindows.from_shards(cfg.data, cfg.seq_len, cfg.seed, fmt=cfg.shard_format)
    if cfg.val_data is None:
        return train, None
    return train, TokenWindows.from_shards(cfg.val_data, cfg.seq_len, shuffle=False, fmt=cfg.shard_format)


def build_model(cfg: PretrainConfig, ctx: Dist) -> tuple[torch.nn.Module, Any]:
    """The model on ``ctx.device``, wrapped for ``cfg.parallel``, and its config."""
    model_cfg = pretrain_model_config(cfg, tokenizer_vocab_size(cfg))
    check_seq_len(cfg, model_cfg)
    torch.manual_seed(cfg.seed)  # same init on every rank
    model = CausalLM(model_cfg).to(ctx.device)
    if cfg.parallel == "ddp":
        model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    elif cfg.parallel == "fsdp":
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    return model, model_cfg


def micro_step_context(model: torch.nn.Module, parallel: str, last: bool):
    """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
    if parallel == "ddp" and not last:
        return model.no_sync()
    if parallel == "fsdp":
        model.set_requires_gradient_sync(last)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: TokenWindows, cfg: PretrainConfig, ctx: Dist, autocast,
             loss_fn=lm_loss) -> float:
    """Mean loss over the first ``eval_batches`` validation batches of ``micro_batch`` windows,
    whatever the world size: rank ``r`` takes batches ``r·n .. (r+1)·n - 1``, ``n = ceil(eval_batches
    / world)``. Every rank runs ``n`` forwards (FSDP's are collective); those past the last batch
    repeat it and do not count."""
    per_rank = math.ceil(cfg.eval_batches / ctx.world)
    total = torch.zeros((), device=ctx.device)
    for i in range(per_rank):
        index = ctx.rank * per_rank + i
        x, y = val.batch(min(index, cfg.eval_batches - 1) * cfg.micro_batch, cfg.micro_batch)
        with autocast():
            loss = loss_fn(model, x.to(ctx.device), y.to(ctx.device)).float()
        if index < cfg.eval_batches:
            total += loss
    return ctx.sum(total) / cfg.eval_batches


class Logger:
    """Progress on stdout and exact per-step records as JSON lines (rank 0 only)."""

    def __init__(self, path: str | None, rank: int) -> None:
        self.active = rank == 0
        self.file = open(path, "a") if self.active and path else None

    def __call__(self, msg: str | None = None, **record: Any) -> None:
        if self.active and msg:
            print(msg, flush=True)
        if self.file and record:
            self.file.write(json.dumps(record) + "\n")  # floats as repr: an exact round trip
            self.file.flush()


def train(cfg: PretrainConfig) -> list[float]:
    """Run ``cfg``; return the per-step training losses (mean over the global batch)."""
    ctx = Dist(cfg.parallel, cfg.device)
    log = Logger(cfg.log_file, ctx.rank)
    try:
        return _train(cfg, ctx, log)
    finally:
        if log.file:
            log.file.close()
        ctx.close()


def _train(cfg: PretrainConfig, ctx: Dist, log: Logger) -> list[float]:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_windows, val_windows = load_data(cfg)
    model, model_cfg = build_model(cfg, ctx)
    optimizer = make_optimizer(model, cfg)
    eval_loss = chunked_lm_loss if cfg.chunked_ce else lm_loss
    loss_fn = torch.compile(eval_loss) if cfg.compile else eval_loss
    use_amp = cfg.amp and ctx.device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    micro = MicroStep(lambda last: micro_step_context(model, cfg.parallel, last), autocast, ctx.device)
    step, samples = 0, 0
    path, skipped = resumable_checkpoint(cfg.ckpt_dir) if cfg.resume else (None, [])
    for bad, reason in skipped:
        if ctx.rank == 0:
            warnings.warn(f"skipping damaged checkpoint {bad}: {reason}", RuntimeWarning, stacklevel=2)
        log(event="skip_checkpoint", path=str(bad), reason=reason)
    if path is not None:
        state = load_checkpoint(path, model, optimizer, verify=False)
        for name in ("seed", "seq_len"):  # they fix the data order
            saved, given = state["config"][name], getattr(cfg, name)
            if saved != given:
                raise ValueError(f"{name} must equal the checkpoint's {saved!r} to resume, got {given!r}")
        step, samples = state["step"], state["samples"]
        log(f"resumed from {path} at step {step}", event="resume", step=step, path=str(path))
    rows, stop = cfg.micro_batch * cfg.grad_accum, cfg.stop_after or cfg.steps
    log(f"{cfg.size}/{cfg.strategy}: {model_cfg.d_model}d×{model_cfg.n_layers}L, parallel={cfg.parallel} "
        f"world={ctx.world} device={ctx.device} amp={'bf16' if use_amp else 'off'}; global batch "
        f"{rows * ctx.world}×{cfg.seq_len} tokens; steps {step}→{stop} of {cfg.steps}")
    losses: list[float] = []
    tick, tick_step = time.perf_counter(), step
    while step < stop:
        first = samples + ctx.rank * rows  # this rank's rows of the global batch
        batches = [train_windows.batch(first + m * cfg.micro_batch, cfg.micro_batch) for m in range(cfg.grad_accum)]
        if max(int(y.max()) for _, y in batches) >= model_cfg.vocab_size:
            raise ValueError(f"the data holds token ids >= vocab_size ({model_cfg.vocab_size}); set --tokenizer")
        lr = lr_at(step, cfg)  # what train_step sets, for the log
        loss = ctx.mean(train_step(model, optimizer, step, cfg, batches, loss_fn, micro))
        step, samples = step + 1, samples + rows * ctx.world
        losses.append(loss)
        msg = None
        if step % cfg.log_every == 0 or step == stop:
            rate = (step - tick_step) * rows * ctx.world * cfg.seq_len / (time.perf_counter() - tick)
            msg = f"step {step:>6}/{cfg.steps} loss {loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s"
            tick, tick_step = time.perf_counter(), step
        log(msg, step=step, loss=loss, lr=lr)
        if val_windows is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == stop):
            val_loss = evaluate(model, val_windows, cfg, ctx, autocast, eval_loss)
            log(f"step {step:>6} val loss {val_loss:.4f}", event="eval", step=step, val_loss=val_loss)
        if cfg.ckpt_dir and ((cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == stop):
            state = {"samples": samples, "config": asdict(cfg)}
            path = save_checkpoint(cfg.ckpt_dir, step, model, optimizer, state, cfg.keep, asdict(model_cfg))
            log(event="checkpoint", step=step, path=str(path))
    return losses


def build_parser() -> argparse.ArgumentParser:
    """One option per :class:`PretrainConfig` field (``--config`` names the size, ``--set`` overrides the model)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PretrainConfig):
        flag = "--config" if f.name == "size" else "--" + f.name.replace("_", "-")
        default = None if f.name in SIZED else f.default
        if f.name == "model_overrides":
            p.add_argument("--set", dest=f.name, nargs="*", default=[], metavar="FIELD=VALUE",
                           type=dataclass_override(ModelConfig),
                           help="ModelConfig overrides, e.g. d_model=256 qk_norm=true n_kv_heads=none "
                                "strategy_options='{\"act\": \"sigmoid\"}'")
        elif isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                           help=HELP.get(f.name))
        else:
            kind = NUMBER_TYPES.get(f.name) or (str if f.default is None else type(f.default))
            choices = {"size": SIZES, "strategy": STRATEGIES, "parallel": PARALLEL, "shard_format": SHARD_FORMATS,
                       "decay": DECAY_RULES, "device": ("auto", "cpu", "cuda")}.get(f.name)
            p.add_argument(flag, dest=f.name, type=kind, default=default, choices=list(choices) if choices else None,
                           help=HELP.get(f.name))
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> list[float]:
    parser = build_parser()
    args = parser.parse_args(argv)
    return train(checked_config(parser, args, int(os.environ.get("WORLD_SIZE", "1"))))


if __name__ == "__main__":
    main()
