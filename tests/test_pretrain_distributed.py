"""recipes.train.pretrain under torchrun: 2 CPU ranks (gloo, loopback) train like one process.

The test launches this file as a torchrun worker (``__main__`` below) once for DDP and FSDP2
and compares the per-step losses with a single-process run on the same global batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes.train import checkpoint, pretrain
from recipes.data import embedded_corpus
from recipes.data.shards import write_shard

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
#: A 2-layer, 32-wide SATFormer on 16-token windows; global batch 8 windows.
TINY = ["--config", "tiny", "--strategy", "satformer", "--set", "d_model=32", "n_layers=2", "n_heads=2",
        "--seq-len", "16", "--steps", str(STEPS), "--warmup", "1", "--log-every", "100"]


def _losses(path: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, path.read_text().splitlines()) if "loss" in e]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    train, _ = embedded_corpus(max_bytes=200_000)
    write_shard(root / "train_000000.bin", train[:60_000].numpy())
    write_shard(root / "train_000001.bin", train[60_000:100_000].numpy(), fmt="raw")
    return root


@pytest.fixture(scope="module")
def reference(shards) -> list[float]:
    """One process, 4 micro-batches of 2 accumulated: the global batch of 8."""
    return pretrain.main([*TINY, "--data", str(shards), "--micro-batch", "2", "--grad-accum", "4"])


@pytest.fixture(scope="module")
def two_ranks(shards, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(out), *TINY, "--data", str(shards), "--micro-batch", "2", "--grad-accum", "2"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"log": out, "stdout": proc.stdout}


def test_accumulation_matches_one_big_batch(shards, reference):
    big = pretrain.main([*TINY, "--data", str(shards), "--micro-batch", "8", "--grad-accum", "1"])
    torch.testing.assert_close(torch.tensor(big), torch.tensor(reference), rtol=1e-5, atol=0)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_single_process(two_ranks, reference, parallel):
    losses = _losses(two_ranks["log"] / f"{parallel}.jsonl")
    assert len(losses) == STEPS
    assert f"parallel={parallel} world=2" in two_ranks["stdout"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=1e-5, atol=0)
    assert reference[-1] < reference[0]  # it trains


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_sharded_checkpoints_resume_bit_identically(two_ranks, parallel):
    log = two_ranks["log"]
    resumed = [json.loads(line) for line in (log / f"{parallel}_resumed.jsonl").read_text().splitlines()]
    assert resumed[0] == {"event": "resume", "step": 2, "path": str(log / f"ck_{parallel}" / "step_00000002")}
    assert _losses(log / f"{parallel}_resumed.jsonl") == _losses(log / f"{parallel}.jsonl")[2:]


def test_fsdp_checkpoint_holds_the_full_weights(two_ranks):
    ddp, fsdp = (checkpoint.load_weights(two_ranks["log"] / f"ck_{p}" / "step_00000004" / "model.safetensors")
                 for p in ("ddp", "fsdp"))
    assert ddp.keys() == fsdp.keys()
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-6, msg=name)
    model = checkpoint.load_model(two_ranks["log"] / "ck_fsdp" / "step_00000004")
    assert model.cfg.d_model == 32 and model.cfg.strategy == "satformer"


def test_parallel_none_on_several_ranks_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="parallel must be 'ddp' or 'fsdp'"):
        pretrain.Dist("none", "cpu")


@pytest.mark.parametrize(
    "field, value, match",
    [("parallel", "zero3", "parallel must be one of"), ("strategy", "nope", "strategy must be one of"),
     ("warmup", 10, r"warmup must be in \[0, steps\)"), ("stop_after", 0, "stop_after must be None or in")],
)
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        pretrain.PretrainConfig(**{"steps": 10, "warmup": 1, field: value})


def test_size_defaults_fill_unset_options():
    args = pretrain.parse_args(["--config", "tiny"])
    cfg = pretrain.resolve(args, world=2)
    d = pretrain.DEFAULTS["tiny"]
    assert (cfg.lr, cfg.seq_len, cfg.weight_decay, cfg.min_lr_ratio, cfg.decay) == (3e-3, 128, 0.1, 0.1, "matrices")
    assert cfg.micro_batch * cfg.grad_accum * 2 * cfg.seq_len == d.global_batch_tokens
    assert cfg.steps == d.train_tokens // d.global_batch_tokens
    assert cfg.warmup == round(d.warmup_frac * cfg.steps)
    given = pretrain.resolve(pretrain.parse_args(["--config", "small", "--lr", "1e-4", "--decay", "matrices"]), world=1)
    assert (given.lr, given.decay) == (1e-4, "matrices")


if __name__ == "__main__":  # torchrun worker: OUT_DIR then pretrain arguments
    import shutil

    import torch.distributed as dist

    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    dist.init_process_group("gloo")  # one group for all runs (pretrain reuses it)
    for mode in ("ddp", "fsdp"):
        run = [*argv, "--parallel", mode, "--ckpt-dir", str(out_dir / f"ck_{mode}"), "--ckpt-every", "2"]
        pretrain.main([*run, "--log-file", str(out_dir / f"{mode}.jsonl")])
        if dist.get_rank() == 0:  # forget the last checkpoint: resume from step 2
            shutil.rmtree(out_dir / f"ck_{mode}" / f"step_{STEPS:08d}")
        dist.barrier()
        pretrain.main([*run, "--resume", "--log-file", str(out_dir / f"{mode}_resumed.jsonl")])
    dist.destroy_process_group()
