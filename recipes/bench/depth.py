"""The depth routing of the dense strategies in isolation: write-once buffer vs ``torch.stack``.

``python -m recipes.bench.depth [--device cpu|cuda] [--compile] [--quick] [--out DIR]``

DenseFormer, MUDDFormer and Attention Residuals (every registered strategy with an ``impl``
option) build each block's (AttnRes: each sublayer's) input from all earlier states. Inside a
full model that routing is a few per cent of a train step (see :mod:`recipes.bench.step`), so
what its storage costs is hard to see there. This benchmark keeps only the routing. Every block
is a stand-in of negligible cost with two sublayers joined by the strategy's ``residual`` hook,
``a = x ⊕ c_i · (q + k + v) / 3`` and ``y = a ⊕ c'_i · a`` (``⊕`` the hook, ``x + out`` unless
the strategy routes per sublayer; learned scalars ``c_i, c'_i``; ``q``, ``k``, ``v`` are the
block inputs the strategy hands over, ``x`` for all three when it hands over one), so one pass
is exactly the strategy's hooks over ``L`` layers plus the loss ``mean(x_L²)``, forward and
backward. Besides the registered strategies at their defaults (AttnRes: Full), ``attnres-block``
is Block AttnRes with :data:`ATTNRES_BLOCKS` blocks at every depth
(``block_size = 2⌈L / N⌉`` sublayers).

Method, as in :mod:`recipes.bench.step`:

* both storages get the same parameters (built from one seed) and the same input, and their
  losses are checked to agree before anything is timed;
* passes are timed **interleaved** (each round runs a few passes of both, the start
  alternating), ``stack ÷ buffer`` is the median over rounds of the ratio of the two medians
  in that round, ``±`` half the inter-quartile range of those per-round ratios; on Linux CPUs
  the ratio of user-space cycles and instructions is reported too;
* peak memory is the highest net allocation during one pass (activations kept for backward,
  gradients, temporaries), from ``torch.profiler`` on CPU and ``max_memory_allocated`` on CUDA;
  ``no-grad`` memory is the same for a forward pass alone under ``torch.no_grad``: the depth state
  the routing keeps alive (what inference keeps, and what activation checkpointing cannot drop:
  AttnRes's ``O(L·d)`` Full vs ``O(N·d)`` Block buffer).

The grid is strategy × width × depth; results go to ``--out`` as ``depth.json``,
``depth.md`` and ``depth_<device>.png``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from recipes.bench.counters import process_counters
from recipes.bench.measure import peak_call_bytes, round_ratio, time_interleaved
from recipes.bench.report import measured_keys
from recipes.lm.checks import check_choice, check_min
from recipes.lm.cli import flags_of, positive_int, user_errors, writable
from value_routing.strategies import STRATEGIES
from value_routing.strategies.base import ModelDims
from value_routing.strategies.depth_states import DEPTH_IMPLS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def routed_strategies() -> tuple[str, ...]:
    """Registered strategies that take an ``impl`` (storage) option."""
    return tuple(n for n, cls in STRATEGIES.items() if "impl" in inspect.signature(cls.__init__).parameters)


#: Blocks of the ``attnres-block`` rows at every depth (the paper recommends about 8; 6 divides
#: every default depth, so the rows of one width hold the block count fixed while ``L`` grows).
ATTNRES_BLOCKS = 6

#: Rows beyond the routed strategies at their defaults: name → (strategy, its options at a depth).
DEPTH_FORMS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "attnres-block": ("attnres", lambda depth: {"block_size": 2 * math.ceil(depth / ATTNRES_BLOCKS)}),
}


def depth_variants() -> tuple[str, ...]:
    """What ``strategies`` may name: the routed strategies, then :data:`DEPTH_FORMS`."""
    return (*routed_strategies(), *(n for n, (s, _) in DEPTH_FORMS.items() if s in routed_strategies()))


def variant_options(name: str, depth: int) -> tuple[str, dict[str, Any]]:
    """The registered strategy of row ``name`` and its options (besides ``impl``) at ``depth``."""
    if name in DEPTH_FORMS:
        strategy, options = DEPTH_FORMS[name]
        return strategy, options(depth)
    return name, {}


@dataclass(frozen=True)
class DepthBenchConfig:
    """The grid (strategies × widths × depths), the input shape and how often to time."""

    device: str = "cpu"
    strategies: tuple[str, ...] = ("dense", "mudd", "attnres", "attnres-block")
    widths: tuple[int, ...] = (256, 768)
    depths: tuple[int, ...] = (6, 12, 24)
    batch: int = 4
    seq_len: int = 256
    dtype: str = "float32"
    warmup: int = 2
    rounds: int = 7
    steps: int = 2

    def __post_init__(self) -> None:
        check_choice(self, "device", ("cpu", "cuda"))
        check_choice(self, "dtype", DTYPES)
        unknown = [s for s in self.strategies if s not in depth_variants()]
        if not self.strategies or unknown:
            raise ValueError(f"strategies must be a non-empty subset of {depth_variants()}, got {self.strategies}")
        for name in ("widths", "depths"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a non-empty tuple of integers >= 1, got {getattr(self, name)}")
        check_min(self, 1, "batch", "seq_len", "warmup", "rounds", "steps")


class RoutingRunner:
    """One strategy with one storage and stand-in blocks; :meth:`step` runs one pass."""

    def __init__(self, strategy: str, impl: str, depth: int, x0: torch.Tensor, mode: str) -> None:
        """``strategy``: one of :func:`depth_variants`."""
        self.label, self.device = f"{strategy}[{impl}]", x0.device
        torch.manual_seed(0)
        dims = ModelDims(d_model=x0.shape[-1], n_layers=depth, n_heads=1, n_kv_heads=1)
        name, options = variant_options(strategy, depth)
        self.strategy = STRATEGIES[name].for_model(dims, impl=impl, **options).to(x0.device, x0.dtype)
        self.scales = nn.Parameter(torch.full((depth, 2), 0.1, device=x0.device, dtype=x0.dtype))
        self.x0 = x0
        self.loss_fn = torch.compile(self.loss, fullgraph=True) if mode == "compiled" else self.loss

    def route(self, x0: torch.Tensor) -> torch.Tensor:
        """The final hidden state after ``depth`` stand-in blocks routed by the strategy."""
        s = self.strategy
        inp, state = s.init_state(x0)
        for layer in range(s.n_layers):
            q, k, v = (inp.x if t is None else t for t in (inp.q, inp.k, inp.v))
            a, state = s.residual(layer, 0, inp.x, self.scales[layer, 0] * (q + k + v) / 3, state)
            y, state = s.residual(layer, 1, a, self.scales[layer, 1] * a, state)
            inp, state = s.block_output(layer, y, state)
        return inp.x

    def forward_only(self) -> None:
        """One routed forward pass under ``torch.no_grad``: what the depth state alone costs."""
        with torch.no_grad():
            self.loss_fn(self.x0)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """``mean(route(x0)²)``: the scalar one pass differentiates."""
        return self.route(x0).float().square().mean()

    def step(self) -> None:
        for p in (*self.strategy.parameters(), self.scales, self.x0):
            p.grad = None
        self.loss_fn(self.x0).backward()


def measure_point(cfg: DepthBenchConfig, strategy: str, width: int, depth: int, mode: str) -> dict[str, Any]:
    """Time and memory-profile both storages of ``strategy`` at one width and depth."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(cfg.batch, cfg.seq_len, width, generator=gen).to(device, dtype).requires_grad_()
    runners = {impl: RoutingRunner(strategy, impl, depth, x0, mode) for impl in DEPTH_IMPLS}
    losses = {impl: r.loss_fn(x0).item() for impl, r in runners.items()}  # compiled too, in that mode
    if not math.isclose(losses["buffer"], losses["stack"], rel_tol=1e-2 if dtype != torch.float32 else 1e-4):
        raise RuntimeError(f"{strategy}: the storages disagree, losses {losses}")
    for runner in runners.values():
        for _ in range(cfg.warmup):
            runner.step()
    order = list(runners.values())
    time_interleaved(order, 1, 1)
    times = time_interleaved(order, cfg.rounds, cfg.steps)
    buf, stk = times[runners["buffer"].label], times[runners["stack"].label]
    (speedup, spread), (cycles, _), (instructions, _) = (round_ratio(stk, buf, k) for k in range(3))
    peaks = {impl: peak_call_bytes(r.step, device) for impl, r in runners.items()}
    no_grad = {impl: peak_call_bytes(r.forward_only, device) for impl, r in runners.items()}
    ms = {impl: 1e3 * statistics.median(s[0] for rnd in times[r.label] for s in rnd) for impl, r in runners.items()}
    return dict(
        strategy=strategy, width=width, depth=depth, mode=mode, buffer_ms=ms["buffer"], stack_ms=ms["stack"],
        speedup=speedup, spread=spread, rel_cycles=cycles, rel_instructions=instructions,
        buffer_bytes=peaks["buffer"], stack_bytes=peaks["stack"], rel_memory=peaks["stack"] / max(peaks["buffer"], 1),
        buffer_no_grad_bytes=no_grad["buffer"], stack_no_grad_bytes=no_grad["stack"],
    )


def run_grid(cfg: DepthBenchConfig, modes: list[str]) -> list[dict[str, Any]]:
    """:func:`measure_point` over the whole grid, printing one line per point."""
    rows = []
    for mode in modes:
        for strategy in cfg.strategies:
            for width in cfg.widths:
                for depth in cfg.depths:
                    rows.append(measure_point(cfg, strategy, width, depth, mode))
                    r = rows[-1]
                    print(f"  {strategy} d={width} L={depth} {mode}: stack ÷ buffer time {r['speedup']:.2f} "
                          f"± {r['spread']:.2f}, memory {r['rel_memory']:.2f}", flush=True)
                if mode == "compiled":
                    torch._dynamo.reset()
    return rows


def format_depth_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per point, the ratios stack ÷ buffer last."""
    counters = measured_keys(rows, ("rel_cycles", "rel_instructions"))
    no_grad = measured_keys(rows, ("buffer_no_grad_bytes", "stack_no_grad_bytes"))  # absent in older runs
    lines = [
        "| strategy | d_model | layers | mode | buffer ms | stack ms | stack ÷ buffer time | "
        + "".join(f"stack ÷ buffer {k.removeprefix('rel_')} | " for k in counters)
        + "buffer MiB | stack MiB | stack ÷ buffer memory |"
        + "".join(f" no-grad {k.split('_')[0]} MiB |" for k in no_grad),
        "|---|---:|---:|---|---:|---:|---:|" + "---:|" * len(counters) + "---:|---:|---:|" + "---:|" * len(no_grad),
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['width']} | {r['depth']} | {r['mode']} | {r['buffer_ms']:.1f} | "
            f"{r['stack_ms']:.1f} | {r['speedup']:.2f} ± {r['spread']:.2f} | "
            + "".join(f"{r[k]:.2f} | " for k in counters)
            + f"{r['buffer_bytes'] / 2**20:.1f} | {r['stack_bytes'] / 2**20:.1f} | {r['rel_memory']:.2f} |"
            + "".join(f" {r.get(k, math.nan) / 2**20:.2f} |" for k in no_grad)
        )
    return "\n".join(lines)


def plot_depth(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """PNG over depth, one line per (strategy, width, mode): stack ÷ buffer time and memory and,
    when measured, the buffer's no-grad memory (the depth state)."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed (pip install -e '.[bench]'); skipped the plot {path}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("speedup", "stack ÷ buffer time", 1.0), ("rel_memory", "stack ÷ buffer peak memory", 1.0)]
    if measured_keys(rows, ("buffer_no_grad_bytes",)):
        panels.append(("buffer_no_grad_bytes", "no-grad peak memory, buffer (MiB)", 1 / 2**20))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4))
    depths = sorted({r["depth"] for r in rows})
    for ax, (key, name, unit) in zip(axes, panels):
        for series in dict.fromkeys((r["strategy"], r["width"], r["mode"]) for r in rows):
            pts = sorted((r["depth"], r[key] * unit) for r in rows if (r["strategy"], r["width"], r["mode"]) == series)
            ax.plot(*zip(*pts), "--" if series[2] == "compiled" else "-", marker="o", ms=3,
                    label=f"{series[0]} d={series[1]} ({series[2]})")
        if unit == 1.0:
            ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_xlabel("layers")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04 * ((len(names) + 3) // 4), 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


#: Defaults per device: (widths, depths, batch, seq_len, dtype, rounds).
DEFAULTS = {
    "cpu": ((256, 768), (6, 12, 24), 4, 256, "float32", 7),
    "cuda": ((768, 2048), (12, 24, 48), 8, 1024, "bfloat16", 15),
    "quick": ((32,), (2, 4), 2, 16, "float32", 2),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True) passes")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: small shapes, few rounds")
    p.add_argument("--strategies", nargs="+", default=None, help=f"default: {depth_variants()}")
    p.add_argument("--widths", type=positive_int, nargs="+", default=None)
    p.add_argument("--depths", type=positive_int, nargs="+", default=None)
    p.add_argument("--batch", type=positive_int, default=None)
    p.add_argument("--seq-len", type=positive_int, default=None)
    p.add_argument("--rounds", type=positive_int, default=None)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--out", type=writable("directory"), default="runs/bench")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from recipes.bench.report import describe_machine

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but torch.cuda.is_available() is False; use --device cpu")
    widths, depths, batch, seq_len, dtype, rounds = DEFAULTS["quick" if args.quick else args.device]
    with user_errors(parser, flags_of(parser)):
        cfg = DepthBenchConfig(
            args.device, tuple(_given(args.strategies, depth_variants())), tuple(_given(args.widths, widths)),
            tuple(_given(args.depths, depths)), _given(args.batch, batch), _given(args.seq_len, seq_len), dtype,
            warmup=1 if args.quick else 2, rounds=_given(args.rounds, rounds), steps=1 if args.quick else 2,
        )
    process_counters()  # before torch starts its thread pool, so its threads are counted
    torch.set_num_threads(args.threads)
    machine = describe_machine(cfg.device, args.threads)
    print(f"{machine}\nconfig: {cfg}", flush=True)
    t0 = time.perf_counter()
    rows = run_grid(cfg, ["eager", "compiled"] if args.compile else ["eager"])
    table = format_depth_table(rows)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "depth.json"), "w") as f:
        json.dump({"machine": machine, "config": asdict(cfg), "seconds": time.perf_counter() - t0, "rows": rows}, f,
                  indent=1)
    with open(os.path.join(args.out, "depth.md"), "w") as f:
        f.write(f"<!-- {machine} -->\n{table}\n")
    plot_depth(rows, os.path.join(args.out, f"depth_{cfg.device}.png"), title=machine)
    print(table, f"\nwrote {args.out}/ in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
