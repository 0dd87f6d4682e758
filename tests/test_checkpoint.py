"""Checkpoints: safetensors + JSON round trips, atomic saves, and bit-identical resume after kill -9."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from recipes.train import checkpoint as ckpt
from recipes.train import pretrain
from recipes.lm.builders import satformer
from recipes.data import embedded_corpus
from recipes.lm.model import CausalLM
from recipes.data.shards import write_shard
from recipes.train import TrainConfig, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = dict(d_model=32, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=16)


def _train_steps(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 256, (2, 8), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), x.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def _model_and_opt():
    model = CausalLM(satformer("tiny", **TINY_CFG))
    return model, make_optimizer(model, TrainConfig(lr=1e-2))


def test_tied_weights_are_stored_once_and_reshared(tmp_path):
    w = torch.randn(4, 3)
    state = {"embed.weight": w, "lm_head.weight": w, "bias": torch.zeros(4)}
    ckpt.save_weights(state, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["bias", "embed.weight"]
    loaded = ckpt.load_weights(tmp_path / "m.safetensors")
    assert loaded["lm_head.weight"] is loaded["embed.weight"]
    torch.testing.assert_close(loaded["lm_head.weight"], w, rtol=0, atol=0)


def test_rng_states_round_trip():
    tensors, meta = ckpt.rng_state()
    json.dumps(meta)
    draw = lambda: (torch.rand(3), np.random.rand(3), random.random())  # noqa: E731
    first = draw()
    ckpt.set_rng_state(tensors, meta)
    second = draw()
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_resumed_optimizer_continues_bit_identically(tmp_path):
    torch.manual_seed(0)
    model, opt = _model_and_opt()
    _train_steps(model, opt, 2)
    path = ckpt.save_checkpoint(tmp_path, 2, model, opt, {"samples": 4}, model_config={})
    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    model2, opt2 = _model_and_opt()
    state = ckpt.load_checkpoint(path, model2, opt2)
    assert state["step"] == 2 and state["samples"] == 4 and state["world_size"] == 1
    _train_steps(model, opt, 2, seed=5)
    _train_steps(model2, opt2, 2, seed=5)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)


def _random_batch(data: torch.Tensor) -> torch.Tensor:
    """A batch that needs all three global RNGs: python picks the length, torch the windows,
    numpy which tokens are corrupted (noise augmentation)."""
    seq = random.randint(5, 12)
    starts = torch.randint(0, len(data) - seq, (2,))
    x = torch.stack([data[s : s + seq] for s in starts.tolist()])
    noise = torch.from_numpy(np.random.rand(*x.shape) < 0.2)
    return torch.where(noise, torch.from_numpy(np.random.randint(0, 256, x.shape)), x)


def _run_random_steps(model, opt, data, steps, ckpt_dir=None, every=3, first=1) -> list[float]:
    losses = []
    for step in range(first, first + steps):
        x = _random_batch(data)
        loss = torch.nn.functional.cross_entropy(model(x).logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if ckpt_dir is not None and step % every == 0:
            ckpt.save_checkpoint(ckpt_dir, step, model, opt, {})
    return losses


def _reseed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.mark.parametrize("lost", [None, "torch", "numpy", "python"])
def test_resume_with_live_randomness_is_bit_identical_only_with_rng_restored(tmp_path, lost):
    """Batches drawn from the global RNGs after init; the run dies at step 8 (last checkpoint: 6).

    A fresh process has other RNG states (reseeded here). Restoring the checkpoint must
    continue bit-identically; with any one generator not restored the losses must differ.
    """
    data = torch.arange(4000) * 7 % 256
    _reseed_all(0)
    model, opt = _model_and_opt()
    full = _run_random_steps(model, opt, data, 12)

    _reseed_all(0)
    model, opt = _model_and_opt()
    _run_random_steps(model, opt, data, 8, ckpt_dir=tmp_path)  # killed after step 8
    _reseed_all(123)  # a fresh process: new init, new RNG states
    model, opt = _model_and_opt()
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), model, opt)
    assert state["step"] == 6
    if lost is not None:  # the negative control: this generator's state is not restored
        {"torch": torch.manual_seed, "numpy": np.random.seed, "python": random.seed}[lost](7)
    resumed = _run_random_steps(model, opt, data, 6, first=7)
    if lost is None:
        assert resumed == full[6:]  # bit-identical, not just close
    else:
        assert resumed != full[6:]


def test_save_is_atomic_and_keeps_the_last_k(tmp_path):
    model, opt = _model_and_opt()
    (tmp_path / ".tmp-step_00000009").mkdir(parents=True)  # a save killed half-way
    (tmp_path / ".tmp-step_00000009" / "model.safetensors").write_bytes(b"partial")
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, opt, {"samples": step}, keep=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"  # the partial step 9 is ignored
    ckpt.save_checkpoint(tmp_path, 9, model, opt, {"samples": 9}, keep=2)  # replaces the partial one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003", "step_00000009"]
    assert ckpt.load_checkpoint(tmp_path / "step_00000009", model, opt)["samples"] == 9
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt.save_checkpoint(tmp_path, 4, model, opt, {}, keep=0)


def test_load_model_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    cfg = satformer("tiny", **TINY_CFG)
    model = CausalLM(cfg)
    opt = make_optimizer(model, TrainConfig())
    from dataclasses import asdict

    ckpt.save_checkpoint(tmp_path, 1, model, opt, {}, model_config=asdict(cfg))
    loaded = ckpt.load_model(ckpt.latest_checkpoint(tmp_path))
    x = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_a_byte(file):
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: the header still parses
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, file, reason", [
    (_truncate, "model.safetensors", "truncated"),
    (_flip_a_byte, "optimizer.safetensors", "SHA-256"),
    (lambda f: f.write_text('{"step": 3, '), "state.json", "not valid JSON"),
    (lambda f: f.unlink(), "rng_rank0.safetensors", "missing"),
    (lambda f: f.unlink(), "state.json", "incomplete"),
])
def test_damaged_checkpoints_are_skipped_and_named(tmp_path, damage, file, reason):
    torch.manual_seed(0)
    cfg = satformer("tiny", **TINY_CFG)
    model = CausalLM(cfg)
    opt = make_optimizer(model, TrainConfig())
    from dataclasses import asdict

    for step in (2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, opt, {"samples": step}, model_config=asdict(cfg))
    newest = tmp_path / "step_00000003"
    assert set(json.loads((newest / "state.json").read_text())["files"]) == {
        "model.safetensors", "optimizer.safetensors", "rng_rank0.safetensors"}
    damage(newest / file)
    with pytest.raises(ValueError, match=f"{re.escape(str(newest / file))}: .*{reason}"):
        ckpt.verify_checkpoint(newest)
    with pytest.raises(ValueError, match=re.escape(str(newest / file))):
        ckpt.load_checkpoint(newest, model, opt)
    if (newest / "state.json").exists() or file == "model.safetensors":  # a dir without state.json is a bare model
        with pytest.raises(ValueError, match=re.escape(str(newest / file))):
            ckpt.load_model(newest)
    path, skipped = ckpt.resumable_checkpoint(tmp_path)
    assert path == tmp_path / "step_00000002" and [p for p, _ in skipped] == [newest]
    assert reason in skipped[0][1] and newest.is_dir()  # skipped, not deleted
    assert ckpt.load_checkpoint(path, model, opt)["step"] == 2

    damage2 = tmp_path / "step_00000002" / "model.safetensors"
    _truncate(damage2)
    with pytest.raises(ValueError, match="no valid checkpoint .*nothing was deleted.*step_00000002"):
        ckpt.resumable_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]
    assert ckpt.resumable_checkpoint(tmp_path / "empty") == (None, [])


def test_no_pickle_anywhere_in_the_recipes():
    for path in (ROOT / "recipes").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bimport pickle\b|torch\.load\(|weights_only\s*=\s*False", text), path


def _steps(path: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


def test_resume_after_kill_9_is_bit_identical(tmp_path):
    train, _ = embedded_corpus(max_bytes=200_000)
    write_shard(tmp_path / "train.bin", train[:50_000].numpy())
    stop = 14
    args = ["--set", "d_model=32", "n_layers=2", "n_heads=2", "--seq-len", "16", "--micro-batch", "4",
            "--steps", "100000", "--warmup", "3", "--data", str(tmp_path / "train.bin"), "--log-every", "1000"]
    full = dict(enumerate(pretrain.main([*args, "--stop-after", str(stop)]), start=1))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "recipes.train.pretrain", *args, "--ckpt-dir", str(tmp_path / "ck"), "--ckpt-every", "3"]
    killed_log = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([*run, "--log-file", str(killed_log)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (killed_log.exists() and killed_log.read_text().count('"event": "checkpoint"') >= 2):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup, maybe mid-step or mid-save
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = _steps(killed_log)
    assert all(killed[s] == full[s] for s in killed if s <= stop)

    # Damage the newest checkpoint: resume must skip it (naming the file) and use the one before.
    newest = ckpt.checkpoint_dirs(tmp_path / "ck")[-1]
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:100])
    resumed_log = tmp_path / "resumed.jsonl"
    done = subprocess.run([*run, "--resume", "--stop-after", str(stop), "--log-file", str(resumed_log)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipping damaged checkpoint {newest}: {newest / 'model.safetensors'}" in done.stderr
    start = next(json.loads(line)["step"] for line in resumed_log.read_text().splitlines() if '"resume"' in line)
    assert 3 <= start < stop and start % 3 == 0 and start < int(newest.name[5:])
    resumed = _steps(resumed_log)
    assert sorted(resumed) == list(range(start + 1, stop + 1))
    assert [resumed[s] for s in resumed] == [full[s] for s in resumed]  # bit-identical, not just close
    assert not list((tmp_path / "ck").glob(".tmp-*"))
