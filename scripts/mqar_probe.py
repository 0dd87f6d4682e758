"""Probe an MQAR setting with one variant (the baseline by default): held-out accuracy along training.

Used to choose the study's MQAR task with the baseline alone (never by looking at the other
strategies). Appends one JSON line per run to ``--out``; runs already there are skipped.

    python scripts/mqar_probe.py --vocab-size 64 --seq-len 64 --num-kv-pairs 8 --steps 2000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from recipes.eval.mqar import MQARConfig, evaluate_mqar, model_mqar_loss, mqar_batch
from recipes.experiments.study_config import VARIANTS, Shape, study_model_config
from recipes.lm.model import CausalLM
from recipes.train.loop import TrainConfig, train_step
from recipes.train.optim import make_optimizer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="baseline", choices=list(VARIANTS))
    p.add_argument("--vocab-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-kv-pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--shape", type=int, nargs=4, default=[64, 4, 4, 2], metavar=("D", "L", "H", "KV"))
    p.add_argument("--demo-arch", action="store_true", help="the demo's tiny architecture (no qk-norm) "
                   "instead of the paper presets'")
    p.add_argument("--out", type=Path, default=Path("mqar_probe.jsonl"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    spec = {k: v for k, v in vars(args).items() if k != "out"}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            if row["spec"] == spec:
                print("done already:", row["curve"])
                return row
    task = MQARConfig(vocab_size=args.vocab_size, seq_len=args.seq_len, num_kv_pairs=args.num_kv_pairs)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup=args.warmup, seed=args.seed, eval_batches=8)
    model_cfg = study_model_config(VARIANTS[args.variant], Shape(*args.shape, paper_arch=not args.demo_arch), task.vocab_size, task.seq_len)
    torch.manual_seed(cfg.seed)
    model = CausalLM(model_cfg)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve, start = [], time.perf_counter()
    for step in range(cfg.steps):
        train_step(model, opt, step, cfg, [mqar_batch(task, cfg.batch_size, gen)], model_mqar_loss)
        if (step + 1) % args.eval_every == 0 or step + 1 == cfg.steps:
            curve.append([step + 1, round(evaluate_mqar(model, task, batches=4), 4)])
            print(f"step {step + 1:>5}  acc {curve[-1][1]:.3f}  {time.perf_counter() - start:6.0f} s", flush=True)
    row = {"spec": spec, "curve": curve, "seconds": time.perf_counter() - start}
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
