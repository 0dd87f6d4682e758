"""What :mod:`recipes.bench.step` measures: variants, train-step runners, interleaved timing, peak memory.

The methodology is described in :mod:`recipes.bench.step`.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from recipes.bench.counters import process_counters
from recipes.lm.builders import SIZES, model_config
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from recipes.train.loop import TrainConfig
from recipes.train.loss import lm_loss
from recipes.train.optim import make_optimizer
from recipes.lm.checks import check_choice, check_min
from value_routing import strategies as strategies_module
from value_routing.strategies import STRATEGIES, strategy_options

MODES: tuple[str, ...] = ("eager", "compiled")


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a strategy name and the options that distinguish the row."""

    label: str
    strategy: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``ModelConfig`` fields the row changes (e.g. ``activation_checkpointing``).
    model_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how often."""

    device: str = "cpu"
    size: str = "tiny"
    batch: int = 8
    seq_len: int = 256
    n_layers: int | None = None
    warmup: int = 3
    rounds: int = 7
    steps: int = 3
    amp: bool = False

    def __post_init__(self) -> None:
        check_choice(self, "device", ("cpu", "cuda"))
        check_choice(self, "size", SIZES)
        check_min(self, 1, "batch", "seq_len", "warmup", "rounds", "steps")
        if self.n_layers is not None and self.n_layers < 2:
            raise ValueError(f"n_layers must be None or >= 2, got {self.n_layers}")


@dataclass(frozen=True)
class Result:
    """One variant measured in one mode; ratios are relative to the baseline of the same run."""

    label: str
    mode: str
    ms_per_step: float
    tokens_per_s: float
    peak_bytes: int
    rel_time: float
    spread: float
    rel_memory: float
    rel_cycles: float = math.nan
    rel_instructions: float = math.nan


def discover_variants(labels: list[str] | None = None) -> list[Variant]:
    """Every registered strategy, baseline first.

    Strategies with an ``impl`` option get one row per storage (``dense``, ``dense[stack]``);
    strategies with a ``fuse_projection`` option get a ``[fused]`` row with it on.
    """
    impls = getattr(strategies_module, "DEPTH_IMPLS", ("buffer", "stack"))
    found = []
    for name in sorted(STRATEGIES, key=lambda n: n != "baseline"):
        options = strategy_options(name)
        if "impl" not in options:
            found.append(Variant(name, name))
        else:
            default = options["impl"]
            for value in sorted(impls, key=lambda v: v != default):
                found.append(Variant(name if value == default else f"{name}[{value}]", name, {"impl": value}))
        if "fuse_projection" in options:
            found.append(Variant(f"{name}[fused]", name, {"fuse_projection": True}))
    if labels is None:
        return found
    known = {v.label: v for v in found}
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"strategies must be among {tuple(known)}, got unknown {unknown}")
    return [known[label] for label in dict.fromkeys(["baseline", *labels])]


def variant_config(variant: Variant, bench: BenchConfig) -> ModelConfig:
    """The model config of ``variant`` at the bench's size, depth and sequence length."""
    overrides: dict[str, Any] = {"max_seq_len": max(bench.seq_len, SIZES[bench.size].get("max_seq_len", 0))}
    if bench.n_layers is not None:
        overrides["n_layers"] = bench.n_layers
    cfg = model_config(bench.size, variant.strategy, **overrides)
    cfg = cfg.with_strategy(variant.strategy, **{**cfg.strategy_options, **variant.options})
    return replace(cfg, **variant.model_options)


class Runner:
    """A model, its optimizer and one fixed batch; :meth:`step` runs one train step."""

    def __init__(self, variant: Variant, bench: BenchConfig, batch: tuple[torch.Tensor, torch.Tensor], mode: str):
        self.label, self.device = variant.label, torch.device(bench.device)
        torch.manual_seed(0)
        self.model = CausalLM(variant_config(variant, bench)).to(self.device)
        self.opt = make_optimizer(self.model, TrainConfig())
        self.x, self.y = (t.to(self.device) for t in batch)
        self.loss_fn = torch.compile(lm_loss) if mode == "compiled" else lm_loss
        self.amp = bench.amp

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            loss = self.loss_fn(self.model, self.x, self.y)
        loss.backward()
        self.opt.step()

    def persistent_bytes(self) -> int:
        """Bytes of parameters, buffers and optimizer state (unique storages)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())


def timed_steps(runner: Runner, steps: int) -> list[tuple[float, float, float]]:
    """``(wall seconds, cycles, instructions)`` of each of ``steps`` train steps (counters are
    ``nan`` on CUDA or where unavailable). A runner with a ``prepare()`` has it called untimed before
    every step; one with ``per_call`` gets each step's numbers divided by it (per token, per prompt)."""
    prepare, per_call = getattr(runner, "prepare", None), getattr(runner, "per_call", 1)
    if runner.device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            if prepare is not None:
                prepare()
            start.record()
            runner.step()
            end.record()
        torch.cuda.synchronize()
        return [(start.elapsed_time(end) / 1e3 / per_call, math.nan, math.nan) for start, end in events]
    counters, times = process_counters(), []
    for _ in range(steps):
        if prepare is not None:
            prepare()
        c0 = counters.read() if counters else (math.nan, math.nan)
        t0 = time.perf_counter()
        runner.step()
        wall = time.perf_counter() - t0
        c1 = counters.read() if counters else (math.nan, math.nan)
        times.append((wall / per_call, (c1[0] - c0[0]) / per_call, (c1[1] - c0[1]) / per_call))
    return times


def time_interleaved(runners: list[Runner], rounds: int, steps: int) -> dict[str, list[list[tuple[float, ...]]]]:
    """Per-round step times of every runner, rotating which runner starts each round."""
    times: dict[str, list[list[tuple[float, ...]]]] = {r.label: [] for r in runners}
    for rnd in range(rounds):
        k = rnd % len(runners)
        gc.collect()
        gc.disable()
        try:
            for runner in runners[k:] + runners[:k]:
                times[runner.label].append(timed_steps(runner, steps))
        finally:
            gc.enable()
    return times


def peak_step_bytes(runner: Runner) -> int:
    """Highest net allocation during one train step (gradients start as ``None``)."""
    runner.opt.zero_grad(set_to_none=True)
    return peak_call_bytes(runner.step, runner.device)


def peak_call_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Highest net allocation on ``device`` during one call of ``fn``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Every (de)allocation event carries the allocator's running total after it; that total
    # persists across profiling sessions, so it is taken relative to its value before the call.
    stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
    if not events:
        return 0
    _, size, total = min(events)
    return max(t for _, _, t in events) - (total - size)


def round_ratio(rounds: list[list[tuple[float, ...]]], base: list[list[tuple[float, ...]]], k: int):
    """Median and half inter-quartile range over rounds of the per-round median ratio to ``base``."""
    ratios = [statistics.median(s[k] for s in t) / statistics.median(s[k] for s in b) for t, b in zip(rounds, base)]
    if len(ratios) < 2:
        return statistics.median(ratios), 0.0
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), (q[2] - q[0]) / 2


def measure(variants: list[Variant], bench: BenchConfig, mode: str) -> list[Result]:
    """Build, warm up, time (interleaved) and memory-profile every variant; baseline must be first."""
    if not variants or variants[0].label != "baseline":
        raise ValueError("variants must start with the baseline")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    vocab = variant_config(variants[0], bench).vocab_size
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (bench.batch, bench.seq_len + 1), generator=gen)
    batch = (tokens[:, :-1], tokens[:, 1:])
    if mode == "compiled":  # one compiled lm_loss per model: raise dynamo's per-function limit
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(variants))
    runners = [Runner(v, bench, batch, mode) for v in variants]
    for runner in runners:
        for _ in range(bench.warmup):
            runner.step()
    time_interleaved(runners, 1, 1)  # one untimed round: caches and allocator settle
    times = time_interleaved(runners, bench.rounds, bench.steps)
    peaks = {r.label: r.persistent_bytes() + peak_step_bytes(r) for r in runners}
    results = []
    for runner in runners:
        wall, cycles, instr = (round_ratio(times[runner.label], times["baseline"], k) for k in range(3))
        step_s = statistics.median([s[0] for t in times[runner.label] for s in t])
        results.append(Result(
            runner.label, mode, step_s * 1e3, bench.batch * bench.seq_len / step_s, peaks[runner.label],
            wall[0], wall[1], peaks[runner.label] / peaks["baseline"], cycles[0], instr[0],
        ))
    del runners
    if mode == "compiled":
        torch._dynamo.reset()
    return results
