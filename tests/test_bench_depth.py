"""recipes.bench.depth: the isolated routing pass is the same computation under both storages,
and the benchmark produces well-formed rows, tables and files. Nothing here asserts timings."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipes.bench import depth as bench_depth
from recipes.bench.depth import (
    ATTNRES_BLOCKS,
    DepthBenchConfig,
    RoutingRunner,
    depth_variants,
    format_depth_table,
    measure_point,
    routed_strategies,
)
from recipes.bench.measure import peak_call_bytes

VARIANTS = ["dense", "mudd", "attnres", "attnres-block"]


def test_routed_strategies_are_those_with_a_storage_option():
    assert set(routed_strategies()) == {"dense", "mudd", "attnres"}
    assert depth_variants() == (*routed_strategies(), "attnres-block")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, r"device must be one of \('cpu', 'cuda'\)"),
        ({"dtype": "float16"}, r"dtype must be one of \('float32', 'bfloat16'\)"),
        ({"strategies": ("satformer",)}, r"strategies must be a non-empty subset of \('dense', 'mudd', 'attnres', "),
        ({"strategies": ()}, "strategies must be a non-empty subset"),
        ({"widths": ()}, "widths must be a non-empty tuple of integers >= 1"),
        ({"depths": (0, 2)}, "depths must be a non-empty tuple of integers >= 1"),
        ({"rounds": 0}, "rounds must be >= 1, got 0"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DepthBenchConfig(**kwargs)


@settings(deadline=None, max_examples=8)
@given(strategy=st.sampled_from(VARIANTS), depth=st.integers(1, 4), width=st.integers(2, 12))
def test_both_storages_compute_the_same_pass(strategy, depth, width):
    """Same loss and same gradients (strategy parameters, block scales, input) for buffer and stack."""
    x0 = torch.randn(2, 3, width, dtype=torch.float64, requires_grad=True)
    grads = {}
    for impl in ("buffer", "stack"):
        runner = RoutingRunner(strategy, impl, depth, x0, "eager")
        with torch.no_grad():  # move off the identity init so every weight matters
            for p in runner.strategy.parameters():
                p.add_(0.3 * torch.randn_like(p))
        runner.step()
        grads[impl] = [x0.grad.clone(), runner.scales.grad.clone(), *(p.grad for p in runner.strategy.parameters())]
        grads[impl].append(runner.loss(x0).detach())
    for a, b in zip(grads["buffer"], grads["stack"], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("strategy", VARIANTS)
def test_routing_pass_is_per_token(strategy):
    """The stand-in pass mixes states of the same token only: token u's input moves no other token's output."""
    x0 = torch.randn(1, 4, 6, dtype=torch.float64)
    runner = RoutingRunner(strategy, "buffer", 3, x0, "eager")
    with torch.no_grad():
        for p in runner.strategy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    jac = torch.autograd.functional.jacobian(runner.route, x0)
    per_pair = jac[0, :, :, 0].abs().sum(dim=(1, 3))  # (token out, token in)
    assert (per_pair.diagonal() > 0).all()
    assert per_pair.masked_fill(torch.eye(4, dtype=torch.bool), 0).max() == 0


def test_attnres_depth_state_grows_with_depth_for_full_only():
    """No-grad peak memory (allocation counts, deterministic): Full AttnRes keeps one slot per
    sublayer, O(L·d); Block AttnRes with N blocks keeps N + 1 slots and a partial sum, O(N·d),
    flat while L grows. The block rows hold N fixed: the depths are multiples of N."""
    x0 = torch.randn(2, 8, 16)
    depths = [ATTNRES_BLOCKS * k for k in (1, 2, 4)]
    peak = {
        (name, depth): peak_call_bytes(RoutingRunner(name, "buffer", depth, x0, "eager").forward_only, x0.device)
        for name in ("attnres", "attnres-block") for depth in depths
    }
    state = x0.numel() * 4  # bytes of one source
    full = [peak["attnres", d] for d in depths]
    block = [peak["attnres-block", d] for d in depths]
    assert full[0] >= (2 * depths[0] + 1) * state  # the buffer: the embedding and 2L outputs
    assert full[1] / full[0] > 1.6 and full[2] / full[1] > 1.6  # ~2x per doubling of L
    assert max(block) / min(block) < 1.3 and 2 * block[-1] < full[-1]
    assert max(block) < 3 * (ATTNRES_BLOCKS + 2) * state


def test_measure_point_and_table():
    cfg = DepthBenchConfig(widths=(8,), depths=(3,), batch=2, seq_len=4, warmup=1, rounds=2, steps=1)
    row = measure_point(cfg, "dense", 8, 3, "eager")
    assert row["strategy"] == "dense" and row["width"] == 8 and row["depth"] == 3
    assert row["buffer_ms"] > 0 and row["stack_ms"] > 0 and math.isfinite(row["speedup"])
    assert row["buffer_bytes"] > 0 and row["stack_bytes"] > 0
    assert 0 < row["buffer_no_grad_bytes"] < row["buffer_bytes"] and row["stack_no_grad_bytes"] > 0
    table = format_depth_table([row])
    assert table.splitlines()[2].startswith("| dense | 8 | 3 | eager |")
    assert table.splitlines()[0].endswith("| stack ÷ buffer memory | no-grad buffer MiB | no-grad stack MiB |")
    old = {k: v for k, v in row.items() if "no_grad" not in k}  # a run from before the no-grad columns
    assert format_depth_table([old]).splitlines()[0].endswith("| stack ÷ buffer memory |")


def test_main_quick_writes_json_table_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = bench_depth.main(["--quick", "--strategies", "mudd", "--widths", "8", "--depths", "2", "3",
                             "--out", str(tmp_path)])
    assert [(r["strategy"], r["depth"]) for r in rows] == [("mudd", 2), ("mudd", 3)]
    saved = json.loads((tmp_path / "depth.json").read_text())
    assert saved["config"]["strategies"] == ["mudd"] and len(saved["rows"]) == 2
    assert (tmp_path / "depth.md").read_text().count("| mudd |") == 2
    assert (tmp_path / "depth_cpu.png").read_bytes()[:4] == b"\x89PNG"
