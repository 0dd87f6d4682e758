"""The doctor's checks: each fast path run on the device against its reference.

A :class:`Check` is a name, a dtype and a small function returning ``(max error, tolerance,
details)`` or raising :class:`Skipped` with the reason. The error is relative: the largest
``|got - want|`` over every compared tensor (outputs and gradients) divided by that tensor's
largest ``|want|``, so one tolerance per dtype fits tensors of any scale. :func:`default_checks`
lists them; :mod:`recipes.tools.doctor` runs them and writes the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from recipes.bench.measure import BenchConfig, Variant, measure
from recipes.lm.builders import SIZES, model_config
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM, KVCache
from recipes.train import lm_loss
from recipes.lm.checks import check_choice, check_min
from value_routing.attention import AttentionMask, sdpa_attention, xformers_attention
from value_routing.attention.backends import xformers_unavailable_reason
from value_routing.strategies import STRATEGIES
from value_routing.kernels import (
    GATE_ACTIVATIONS,
    HAS_TRITON,
    depth_aggregate_reference,
    depth_aggregate_triton,
    gate_mix_reference,
    gate_mix_triton,
)
from value_routing.kernels._triton_utils import INTERPRET

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Relative tolerance of a low-precision path against its reference, per input dtype.
KERNEL_TOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 2e-3}
ATTENTION_TOL = {"fp32": 2e-3, "bf16": 3e-2, "fp16": 5e-3}
COMPILE_BACKENDS: tuple[str, ...] = ("inductor", "aot_eager", "eager")


class Skipped(Exception):
    """Raised by a check that cannot run here; the message is the reason."""


@dataclass(frozen=True)
class DoctorConfig:
    """Where and how thoroughly to check."""

    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    #: ``torch.compile`` backend of the compile checks (``aot_eager`` traces without code generation).
    compile_backend: str = "inductor"
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    bench_rounds: int = 5
    #: The measured models' size and batch; ``None``: ``small`` at 8×1024 tokens on CUDA, ``tiny``
    #: at 4×128 on CPU (a short run either way).
    bench_size: str | None = None
    bench_batch: int | None = None
    bench_seq_len: int | None = None

    def __post_init__(self) -> None:
        check_choice(self, "device", ("cpu", "cuda"))
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' needs a CUDA device, but torch.cuda.is_available() is False")
        check_choice(self, "compile_backend", COMPILE_BACKENDS)
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be a non-empty subset of {tuple(STRATEGIES)}, got {self.strategies}")
        check_min(self, 1, "bench_rounds")
        if self.bench_size is not None:
            check_choice(self, "bench_size", SIZES)
        for name in ("bench_batch", "bench_seq_len"):
            if getattr(self, name) is not None:
                check_min(self, 1, name)

    def bench_config(self) -> BenchConfig:
        """The benchmark of :func:`bench_check`: eager steps, bf16 autocast on CUDA."""
        cuda = self.device == "cuda"
        return BenchConfig(
            device=self.device, size=self.bench_size or ("small" if cuda else "tiny"),
            batch=self.bench_batch or (8 if cuda else 4), seq_len=self.bench_seq_len or (1024 if cuda else 128),
            warmup=2, rounds=self.bench_rounds, steps=2, amp=cuda,
        )


Outcome = tuple[float, float, Mapping[str, Any]]


@dataclass(frozen=True)
class Check:
    """One named check of one dtype: ``run(cfg, dtype) -> (max error, tolerance, details)``."""

    name: str
    dtype: str
    run: Callable[[DoctorConfig, torch.dtype], Outcome] = field(repr=False)

    def __post_init__(self) -> None:
        check_choice(self, "dtype", DTYPES)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` in float64 (``inf`` if ``got`` is not finite)."""
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def _forward_backward(fn, inputs: list[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
    """``fn``'s output and the gradients of ``<out, grad>`` with respect to ``inputs``."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]


def _compare(fn, reference, inputs: list[torch.Tensor], grad: torch.Tensor) -> float:
    """Worst relative error of ``fn`` (output and input gradients) against ``reference`` run in
    float32 on the same rounded inputs."""
    got = _forward_backward(fn, inputs, grad)
    want = _forward_backward(reference, [t.float() for t in inputs], grad.float())
    return max(rel_error(g, w) for g, w in zip(got, want))


def _randn(*shape: int, device: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


# --- attention: xFormers vs SDPA -------------------------------------------------------------

#: (batch, q_len, kv_len, heads, kv_heads, mask) per case.
ATTENTION_CASES: dict[str, tuple[int, int, int, int, int, AttentionMask]] = {
    "causal": (2, 64, 64, 8, 8, AttentionMask()),
    "packed": (1, 64, 64, 8, 8, AttentionMask(seq_lens=(40, 17, 7))),
    "gqa": (2, 64, 64, 8, 2, AttentionMask()),
    "decode": (2, 1, 64, 8, 2, AttentionMask(q_offset=63)),
    "decode-chunk": (2, 4, 64, 8, 2, AttentionMask(q_offset=60)),
}


def attention_check(case: str) -> Callable[[DoctorConfig, torch.dtype], Outcome]:
    def run(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
        if cfg.device != "cuda":
            raise Skipped("xFormers runs on CUDA only (device is cpu)")
        if (reason := xformers_unavailable_reason()) is not None:
            raise Skipped(f"xFormers unusable: {reason}")
        batch, q_len, kv_len, heads, kv_heads, mask = ATTENTION_CASES[case]
        q = _randn(batch, q_len, heads, 64, device=cfg.device, dtype=dtype, seed=1)
        k, v = (_randn(batch, kv_len, kv_heads, 64, device=cfg.device, dtype=dtype, seed=s) for s in (2, 3))
        grad = _randn(batch, q_len, heads, 64, device=cfg.device, dtype=dtype, seed=4)
        got = _forward_backward(lambda *t: xformers_attention(*t, mask), [q, k, v], grad)
        want = _forward_backward(lambda *t: sdpa_attention(*t, mask), [q, k, v], grad)
        return max(rel_error(g, w) for g, w in zip(got, want)), ATTENTION_TOL[_dtype_name(dtype)], {}

    return run


# --- Triton kernels vs their references ----------------------------------------------------


def _require_kernels(cfg: DoctorConfig) -> None:
    if not HAS_TRITON:
        raise Skipped("Triton is not installed (pip install 'value_routing[triton]')")
    if cfg.device == "cpu" and not INTERPRET:
        raise Skipped("the Triton kernels run on CUDA; --triton-interpret runs them on CPU through Triton's interpreter")


def gate_mix_check(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
    """Every activation; 3 kv-heads (not a power of two: masked lanes) and 34 tokens (a partial tile)."""
    _require_kernels(cfg)
    shape = (2, 17, 3, 64)
    v, v1 = (_randn(*shape, device=cfg.device, dtype=dtype, seed=s) for s in (1, 2))
    logits = _randn(*shape[:3], device=cfg.device, dtype=dtype, seed=3)
    grad = _randn(*shape, device=cfg.device, dtype=dtype, seed=4)
    errors = {
        act: _compare(lambda *t: gate_mix_triton(*t, act), lambda *t: gate_mix_reference(*t, act), [v, v1, logits], grad)
        for act in GATE_ACTIVATIONS
    }
    return max(errors.values()), KERNEL_TOL[_dtype_name(dtype)], {f"error[{a}]": e for a, e in errors.items()}


def depth_aggregate_check(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
    """Per-token weights (MUDDFormer) and shared weights (DenseFormer) over a slice of a buffer."""
    _require_kernels(cfg)
    buffer = _randn(5, 2, 5, 1100, device=cfg.device, dtype=dtype, seed=1)  # > 1024: two channel blocks
    states = buffer[:4]
    grad = _randn(3, 2, 5, 1100, device=cfg.device, dtype=dtype, seed=2)
    errors = {
        kind: _compare(depth_aggregate_triton, depth_aggregate_reference,
                       [states, _randn(*w_shape, device=cfg.device, dtype=dtype, seed=3)], grad)
        for kind, w_shape in (("per-token", (2, 5, 3, 4)), ("shared", (1, 1, 3, 4)))
    }
    return max(errors.values()), KERNEL_TOL[_dtype_name(dtype)], {f"error[{k}]": e for k, e in errors.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return next(n for n, d in DTYPES.items() if d == dtype)


# --- whole models: compile, autocast, KV-cache decode ----------------------------------------


def small_config(strategy: str) -> ModelConfig:
    """A model small enough to compile in seconds, with GQA and the strategy's default options."""
    return model_config(
        "tiny", strategy, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, attention_backend="auto"
    )


def _model(strategy: str, device: str) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(small_config(strategy)).to(device)


def _batch(device: str, batch: int = 2, seq: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 256, (batch, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)
    return tokens[:, :-1], tokens[:, 1:]


def _loss_and_grads(model: CausalLM, loss_fn, batch) -> list[torch.Tensor]:
    loss = loss_fn(model, *batch)
    return [loss, *torch.autograd.grad(loss, list(model.parameters()))]


def compile_check(strategy: str) -> Callable[[DoctorConfig, torch.dtype], Outcome]:
    """The loss and every gradient of one compiled train step == eager."""

    def run(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
        batch = _batch(cfg.device)
        eager = _loss_and_grads(_model(strategy, cfg.device), lm_loss, batch)
        torch._dynamo.reset()  # every strategy's step compiles afresh, as in a new process
        compiled_loss = torch.compile(lm_loss, backend=cfg.compile_backend)
        compiled = _loss_and_grads(_model(strategy, cfg.device), compiled_loss, batch)
        torch._dynamo.reset()
        return max(rel_error(c, e) for c, e in zip(compiled, eager)), 1e-4, {"backend": cfg.compile_backend}

    return run


def autocast_check(strategy: str) -> Callable[[DoctorConfig, torch.dtype], Outcome]:
    """A bf16-autocast train step: loss and gradients finite, loss within 2% of the fp32 step."""

    def run(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
        if cfg.device == "cuda" and not torch.cuda.is_bf16_supported():
            raise Skipped("this GPU has no bfloat16 support")
        batch, model = _batch(cfg.device), _model(strategy, cfg.device)
        with torch.autocast(cfg.device, dtype=torch.bfloat16):
            mixed = _loss_and_grads(model, lm_loss, batch)
        full = _loss_and_grads(model, lm_loss, batch)
        finite = all(torch.isfinite(t).all() for t in mixed)
        error = rel_error(mixed[0], full[0]) if finite else math.inf
        grad_error = max(rel_error(m, f) for m, f in zip(mixed[1:], full[1:]))
        return error, 2e-2, {"loss_fp32": full[0].item(), "loss_bf16": mixed[0].item(), "grad_error": grad_error}

    return run


def decode_check(strategy: str) -> Callable[[DoctorConfig, torch.dtype], Outcome]:
    """Prefill 5 tokens into a KV cache, decode the rest one at a time: logits == full forward."""

    def run(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
        model = _model(strategy, cfg.device)
        x, _ = _batch(cfg.device, seq=16)
        with torch.no_grad():
            full = model(x).logits
            cache = KVCache.allocate(model.cfg, x.shape[0], x.shape[1], device=cfg.device)
            out, cache = model(x[:, :5], cache=cache)
            steps = [out]
            for t in range(5, x.shape[1]):
                out, cache = model(x[:, t : t + 1], cache=cache)
                steps.append(out)
        return rel_error(torch.cat(steps, 1), full), 1e-4, {}

    return run


# --- throughput and memory -------------------------------------------------------------------


def bench_check(cfg: DoctorConfig, dtype: torch.dtype) -> Outcome:
    """SATFormer ÷ baseline train-step tokens/s and peak memory over interleaved rounds.

    A measurement, not a comparison: the error and tolerance are NaN, and the check fails only
    if a ratio is not finite.
    """
    bench = cfg.bench_config()
    base, sat = measure([Variant("baseline", "baseline"), Variant("satformer", "satformer")], bench, "eager")
    if not all(math.isfinite(x) and x > 0 for x in (sat.rel_time, sat.rel_memory)):
        raise ValueError(f"non-finite ratios: time {sat.rel_time}, memory {sat.rel_memory}")
    details = {
        "tokens_per_s_ratio": 1 / sat.rel_time, "time_ratio_spread": sat.spread, "peak_memory_ratio": sat.rel_memory,
        "baseline_tokens_per_s": base.tokens_per_s, "satformer_tokens_per_s": sat.tokens_per_s,
        "size": bench.size, "batch": bench.batch, "seq_len": bench.seq_len, "rounds": bench.rounds,
        "amp_bf16": bench.amp,
    }
    return math.nan, math.nan, details


def default_checks(cfg: DoctorConfig) -> list[Check]:
    """Every check, in report order."""
    checks = [Check(f"attention/{case}", name, attention_check(case)) for case in ATTENTION_CASES for name in DTYPES]
    checks += [Check(f"kernels/{op.__name__.removesuffix('_check')}", name, op)
               for op in (gate_mix_check, depth_aggregate_check) for name in DTYPES]
    for kind, factory, dtype in (("compile", compile_check, "fp32"), ("autocast", autocast_check, "bf16"),
                                 ("decode", decode_check, "fp32")):
        checks += [Check(f"{kind}/{s}", dtype, factory(s)) for s in cfg.strategies]
    checks.append(Check("bench/satformer-vs-baseline", "bf16" if cfg.device == "cuda" else "fp32", bench_check))
    return checks
