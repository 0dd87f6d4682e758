"""The training recipe's arithmetic, against numbers written out by hand: the lr schedule, the clip
and the mean over micro-batches of the shared train step (one process and two DDP gloo ranks),
weight decay groups, the data position in a checkpoint and the evaluation batches.

AdamW and clipping hide a constant factor on the gradient, so the loss curves of a summed and an
averaged accumulation look alike: the gradients are compared here, before the clip.
"""

import copy
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from recipes.data.shards import TokenWindows, write_shard
from recipes.lm.builders import satformer
from recipes.lm.model import CausalLM
from recipes.train import OptimConfig, TrainConfig, lr_at, make_optimizer, pretrain, train_step
from recipes.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
#: A 2-layer, 32-wide SATFormer in float64 on 16-token windows of random bytes, one step.
TINY = ["--config", "tiny", "--strategy", "satformer", "--set", "d_model=32", "n_layers=2", "n_heads=2",
        "--seq-len", "16", "--warmup", "0", "--log-every", "100", "--no-activation-checkpointing"]


# --- the schedule: warmup 4, then cosine over 100 steps from lr = 0.01 to 0.1 · lr ---------------

SCHEDULE = OptimConfig(steps=104, lr=0.01, warmup=4, min_lr_ratio=0.1)
# lr · (step + 1) / warmup, then lr · (0.1 + 0.9 · ½ · (1 + cos(π · (step − 4) / 100)));
# cos(π/100) = 0.9995065603657316, cos(99π/100) = −0.9995065603657316.
HAND = {
    0: 0.0025,  # first warmup step: lr / 4, not 0
    2: 0.0075,
    3: 0.01,  # warmup − 1: the warmup ends at the full lr
    4: 0.01,  # warmup: cosine progress 0
    5: 0.009997779521645792,  # warmup + 1: 0.01 · (0.1 + 0.45 · 1.9995065603657316)
    54: 0.0055,  # half way: 0.01 · (0.1 + 0.45)
    103: 0.0010022204783542078,  # last step: 0.01 · (0.1 + 0.45 · 0.0004934396342684)
    104: 0.001,  # the floor: min_lr_ratio · lr
}


@pytest.mark.parametrize("step", sorted(HAND))
def test_lr_at_matches_hand_computed_values(step):
    assert lr_at(step, SCHEDULE) == pytest.approx(HAND[step], rel=1e-12, abs=0)


def test_schedule_without_warmup_starts_at_lr_and_never_goes_below_the_floor():
    cfg = OptimConfig(steps=10, lr=0.5, warmup=0, min_lr_ratio=0.2)
    assert lr_at(0, cfg) == pytest.approx(0.5, rel=1e-15)
    assert lr_at(5, cfg) == pytest.approx(0.5 * (0.2 + 0.8 * 0.5), rel=1e-12)  # cos(π/2) = 0
    assert min(lr_at(s, cfg) for s in range(11)) == pytest.approx(0.1, rel=1e-12)


# --- the shared train step: lr, clip, mean over micro-batches -----------------------------------


class GradRecorder:
    """An optimizer stub: records the lr and the gradients it is asked to step with."""

    def __init__(self, params):
        self.params, self.param_groups, self.steps = list(params), [{"lr": None}], []

    def step(self):
        self.steps.append((self.param_groups[0]["lr"], [p.grad.clone() for p in self.params]))

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3, dtype=torch.float64)


def _square_loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _raw_grads(model, batches):
    """The mean gradient of ``batches``, computed on a copy, unclipped."""
    model = copy.deepcopy(model)
    torch.stack([_square_loss(model, x, y) for x, y in batches]).mean().backward()
    return model, [p.grad for p in model.parameters()]


def _batches(rows, parts, scale=1.0):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 4, generator=gen, dtype=torch.float64) * scale
    y = torch.randn(rows, 3, generator=gen, dtype=torch.float64)
    return list(zip(x.chunk(parts), y.chunk(parts)))


def test_train_step_clips_a_large_gradient_to_grad_clip():
    model, batches = _linear(), _batches(6, 1, scale=30.0)
    cfg = OptimConfig(steps=104, lr=0.01, warmup=4, grad_clip=0.5)
    copied, _ = _raw_grads(model, batches)
    assert torch.nn.utils.clip_grad_norm_(copied.parameters(), 0.5) > 5  # well above the clip
    opt = GradRecorder(model.parameters())
    train_step(model, opt, 5, cfg, batches, _square_loss)
    (lr, grads), = opt.steps
    assert lr == pytest.approx(HAND[5], rel=1e-12)
    for got, want in zip(grads, [p.grad for p in copied.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item() == pytest.approx(0.5, rel=1e-6)  # clip_grad_norm_'s eps
    assert all(p.grad is None for p in model.parameters())  # dropped after the step


def test_train_step_leaves_a_gradient_below_the_clip_untouched():
    model, batches = _linear(), _batches(6, 1)
    _, expected = _raw_grads(model, batches)
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in expected])) < 100
    opt = GradRecorder(model.parameters())
    train_step(model, opt, 0, OptimConfig(grad_clip=100.0), batches, _square_loss)
    for got, want in zip(opt.steps[0][1], expected):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_fit_resumed_with_earlier_losses_takes_only_the_remaining_steps_at_their_lrs():
    model, batches = _linear(), _batches(6, 1)
    cfg = TrainConfig(steps=6, lr=0.01, warmup=2, grad_clip=100.0)
    opt, seen = GradRecorder(model.parameters()), []
    earlier = [9.0, 8.0]
    got = fit(model, opt, cfg, lambda: batches[0], _square_loss, after_step=seen.append, losses=earlier)
    assert got is earlier and len(got) == 6 and got[:2] == [9.0, 8.0]
    assert seen == [3, 4, 5, 6]
    assert [lr for lr, _ in opt.steps] == [lr_at(s, cfg) for s in range(2, 6)]
    with pytest.raises(ValueError, match="losses: 7 steps already taken, more than steps=6"):
        fit(model, opt, cfg, lambda: batches[0], _square_loss, losses=[1.0] * 7)


@pytest.mark.parametrize("parts", [2, 3])
def test_train_step_averages_micro_batch_gradients_and_losses(parts):
    model = _linear()
    one, split = GradRecorder(model.parameters()), GradRecorder(model.parameters())
    cfg = OptimConfig(grad_clip=1e9)
    loss_one = train_step(model, one, 0, cfg, _batches(6, 1), _square_loss)
    loss_split = train_step(model, split, 0, cfg, _batches(6, parts), _square_loss)
    for a, b in zip(one.steps[0][1], split.steps[0][1]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss_split, loss_one, rtol=1e-6, atol=0)  # float32 mean of the losses


# --- pretraining: k micro-batches of b == one of k·b, also on two DDP ranks ----------------------


def _record_grads_before_clip(store: list) -> None:
    """Make pretraining float64 and record every gradient as the shared step is about to clip it."""
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *args, **kwargs):
        params = list(params)
        store.append([p.grad.detach().clone() for p in params])
        return real_clip(params, max_norm, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = clip
    pretrain.CausalLM = lambda cfg: CausalLM(cfg).double()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bytes")
    rng = np.random.default_rng(0)
    write_shard(root / "train.bin", rng.integers(0, 256, 4000))
    write_shard(root / "val.bin", rng.integers(0, 256, 2000))
    return root


def _pretrain_grads(monkeypatch, data, *args):
    store: list = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", torch.nn.utils.clip_grad_norm_)
    monkeypatch.setattr(pretrain, "CausalLM", CausalLM)
    _record_grads_before_clip(store)
    pretrain.main([*TINY, "--steps", "1", "--data", str(data / "train.bin"), *args])
    (grads,) = store
    return grads


@pytest.fixture(scope="module")
def one_big_batch(data):
    """One process, one micro-batch of 8 windows: the gradients before the clip."""
    with pytest.MonkeyPatch.context() as mp:
        return _pretrain_grads(mp, data, "--micro-batch", "8", "--grad-accum", "1")


@pytest.fixture(scope="module")
def accumulated(data, tmp_path_factory):
    """One process, 4 micro-batches of 2 windows: the gradients and the loss on 3 val batches of 2."""
    log = tmp_path_factory.mktemp("accum") / "log.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        grads = _pretrain_grads(mp, data, "--micro-batch", "2", "--grad-accum", "4", *_eval_args(data, log))
    return grads, _val_loss(log)


def _eval_args(data, log):
    return ["--val-data", str(data / "val.bin"), "--eval-every", "1", "--eval-batches", "3", "--log-file", str(log)]


def _val_loss(log: Path) -> float:
    (value,) = [e["val_loss"] for e in map(json.loads, log.read_text().splitlines()) if "val_loss" in e]
    return value


def _assert_same_grads(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


def test_pretrain_accumulation_gives_the_big_batch_gradient(accumulated, one_big_batch):
    _assert_same_grads(accumulated[0], one_big_batch)


def test_two_ddp_ranks_accumulate_the_big_batch_gradient(data, accumulated, one_big_batch, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    log = tmp_path / "ddp.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path), *TINY, "--steps", "1", "--data", str(data / "train.bin"), "--parallel", "ddp",
           "--micro-batch", "2", "--grad-accum", "2", *_eval_args(data, log)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        saved = load_file(str(tmp_path / f"grads_rank{rank}.safetensors"))
        _assert_same_grads([saved[str(i)] for i in range(len(saved))], one_big_batch)
    # 3 evaluation batches of 2 windows over 2 ranks: the same 3 as one process evaluates
    assert _val_loss(log) == pytest.approx(accumulated[1], rel=1e-6)


# --- weight decay groups --------------------------------------------------------------------------


def _tiny_lm():
    torch.manual_seed(0)
    return CausalLM(satformer("tiny", d_model=32, n_layers=2, n_heads=2, max_seq_len=16)).double()


@pytest.mark.parametrize("rule", ["matrices", "all"])
def test_weight_decay_applies_to_the_named_parameters_only(rule):
    model = _tiny_lm()
    opt = make_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5, decay=rule))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.5 for p in g["params"]}
    names = {n: id(p) in decayed for n, p in model.named_parameters()}
    norms = [n for n in names if "norm" in n]
    assert norms and "embed.weight" in names and any("gate" in n for n in names)
    if rule == "matrices":
        assert names["embed.weight"] and not any(names[n] for n in norms)
        assert {n for n, d in names.items() if d} == {n for n, p in model.named_parameters() if p.ndim == 2}
    else:
        assert all(names.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decay moves a weight
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] * (1 - 0.1 * 0.5) if names[n] else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=1e-14, atol=0, msg=n)


# --- the data position in a checkpoint and the evaluation batches --------------------------------


def test_resume_continues_with_exactly_the_next_batch(monkeypatch, data, tmp_path):
    starts: list[tuple[int, int]] = []
    real_batch = TokenWindows.batch
    monkeypatch.setattr(TokenWindows, "batch", lambda self, s, r: starts.append((s, r)) or real_batch(self, s, r))
    args = [*TINY, "--steps", "4", "--data", str(data / "train.bin"), "--micro-batch", "2", "--grad-accum", "2"]
    full = pretrain.main(args)
    assert starts == [(s, 2) for s in range(0, 16, 2)]
    starts.clear()
    ck = ["--ckpt-dir", str(tmp_path / "ck")]
    pretrain.main([*args, *ck, "--stop-after", "2"])
    state = json.loads((tmp_path / "ck" / "step_00000002" / "state.json").read_text())
    assert (state["step"], state["samples"]) == (2, 8)
    starts.clear()
    resumed = pretrain.main([*args, *ck, "--resume"])
    assert starts == [(s, 2) for s in range(8, 16, 2)]
    assert resumed == full[2:]


def _ctx(rank, world):
    ctx = pretrain.Dist("none", "cpu")
    ctx.rank, ctx.world = rank, world
    return ctx


def test_evaluate_uses_exactly_eval_batches_fixed_windows_on_any_world(data):
    val = TokenWindows.from_shards(str(data / "val.bin"), 16, shuffle=False)
    cfg = pretrain.PretrainConfig(steps=2, warmup=0, micro_batch=2, eval_batches=3, seq_len=16)
    seen: list[torch.Tensor] = []

    def loss_fn(model, x, y):  # a loss that names its batch
        seen.append(x)
        return x[:, 0].double().mean()

    first = pretrain.evaluate(None, val, cfg, _ctx(0, 1), nullcontext, loss_fn)
    expected = [val.batch(i * 2, 2)[0] for i in range(3)]
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert first == pytest.approx(sum(x[:, 0].double().mean().item() for x in expected) / 3, rel=1e-6)
    assert pretrain.evaluate(None, val, cfg, _ctx(0, 1), nullcontext, loss_fn) == first  # same every call
    # two ranks (their sums, as the all-reduce would add them): the same three batches
    assert sum(pretrain.evaluate(None, val, cfg, _ctx(r, 2), nullcontext, loss_fn) for r in (0, 1)) == pytest.approx(
        first, rel=1e-6)


if __name__ == "__main__":  # torchrun worker: OUT_DIR then pretrain arguments; saves each rank's gradients
    import torch.distributed as dist

    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    store: list = []
    _record_grads_before_clip(store)
    dist.init_process_group("gloo")
    pretrain.main(argv)
    save_file({str(i): g for i, g in enumerate(store[0])}, str(out_dir / f"grads_rank{dist.get_rank()}.safetensors"))
    dist.destroy_process_group()


# --- the recipe's own checks: a value the arithmetic above has no meaning for is refused by name ---

@pytest.mark.parametrize("field, value", [
    ("lr", 0.0), ("lr", -1e-3), ("lr", float("inf")), ("lr", float("nan")),
    ("min_lr_ratio", -0.1), ("min_lr_ratio", 1.5), ("min_lr_ratio", float("nan")),
    ("weight_decay", -0.1), ("weight_decay", float("inf")), ("weight_decay", float("nan")),
    ("grad_clip", 0.0), ("grad_clip", -1.0), ("grad_clip", float("nan")),
])
def test_optim_config_refuses_values_the_schedule_cannot_mean(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        OptimConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        TrainConfig(**{field: value})


def test_an_infinite_clip_leaves_the_gradients_alone():
    """``grad_clip = inf`` is the documented "no clipping": the step equals one with a huge clip."""
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 3).double()
    batches = [(torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64))]
    steps = {}
    for clip in (float("inf"), 1e30):
        model = copy.deepcopy(base)
        opt = make_optimizer(model, OptimConfig(lr=0.1, warmup=0, grad_clip=clip))
        train_step(model, opt, 0, OptimConfig(lr=0.1, warmup=0, grad_clip=clip), batches,
                   _square_loss)
        steps[clip] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(steps[float("inf")], steps[1e30]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
