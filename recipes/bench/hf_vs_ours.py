"""Our baseline ``CausalLM`` against Hugging Face's ``LlamaForCausalLM`` holding the same weights, in one run.

``python -m recipes.bench.hf_vs_ours [--size small] [--batch 2] [--seq-len 512] [--prompt-len 256]
[--new-tokens 32] [--rounds 7] [--threads 2] [--quick] [--out DIR]``

One baseline model of ``--size`` (:data:`recipes.lm.builders.SIZES`; without the paper sizes'
q/k-norm, which Llama lacks) is built and converted with
:func:`recipes.interop.convert.to_hf` (a ``LlamaForCausalLM``, SDPA attention, float32, CPU); the
two are first checked to compute the same logits. Then, on the same fixed tokens, four tasks:

``train``
    ``zero_grad → forward + cross-entropy → backward → AdamW step``, each side's usual loss: ours
    the LM head fused into the loss in token chunks (``model(x, targets=y)``, the training
    default), theirs the full logits and ``cross_entropy`` (what ``labels=`` computes);
``train[lm_loss]``
    the same, both from the full logits (:func:`recipes.train.loss.lm_loss`): the model alone;
``prefill``
    a ``(batch, prompt_len)`` prompt into a fresh KV cache, the last position's logits (HF with
    ``logits_to_keep=1``, as its ``generate`` runs it; ours ``hidden_states`` and the head);
``decode``
    ``new_tokens`` single-token steps from a prefilled cache (given tokens, not sampled; ours
    preallocated :class:`~recipes.lm.model.KVCache`, theirs ``DynamicCache``); time per token.

Every task's two runners are timed **interleaved**: each round runs ``--steps`` timed calls of
every runner, the starting runner rotating by one per round; untimed preparation (a copy of the
prefilled cache, the train/eval switch) precedes every call. A task's ratio is the median over
rounds of ``median(ours) / median(theirs)`` in that round, ``spread`` half the inter-quartile
range (:func:`recipes.bench.measure.round_ratio`). Target (issue 20): ours ≤ 1.0× their time.
Results go to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from recipes.bench.measure import round_ratio, time_interleaved
from recipes.bench.report import describe_machine, write_results
from recipes.lm.builders import SIZES, model_config
from recipes.lm.cli import int_at_least, positive_int, user_errors, writable
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM, KVCache
from recipes.train.loss import chunked_lm_loss, lm_loss

TASKS = ("train", "train[lm_loss]", "prefill", "decode")


@dataclass(frozen=True)
class Shape:
    """What to measure: the model size, the batch and the timing schedule."""

    size: str = "small"
    n_layers: int | None = None
    batch: int = 2
    seq_len: int = 512
    prompt_len: int = 256
    new_tokens: int = 32
    warmup: int = 1
    rounds: int = 7
    steps: int = 2

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {tuple(SIZES)}, got {self.size!r}")
        for name in ("batch", "seq_len", "prompt_len", "new_tokens", "rounds", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def config(self) -> ModelConfig:
        """The baseline model both sides hold: the size's shape without q/k-norm (Llama has none)."""
        overrides: dict[str, Any] = {"max_seq_len": max(self.seq_len, self.prompt_len + self.new_tokens),
                                     "qk_norm": False}
        if self.n_layers is not None:
            overrides["n_layers"] = self.n_layers
        return model_config(self.size, "baseline", **overrides)


class Runner:
    """One side of one task for :func:`recipes.bench.measure.time_interleaved`: ``prepare()`` (untimed)
    then ``step()`` (timed), its numbers per ``per_call`` units (a step, a prompt, a token)."""

    device = torch.device("cpu")

    def __init__(self, label: str, prepare: Callable[[], None], step: Callable[[], object], per_call: int = 1):
        self.label, self.prepare, self.step, self.per_call = label, prepare, step, per_call


def train_runner(label: str, model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> Runner:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        opt.step()

    return Runner(label, model.train, run)


def inference_runners(ours: CausalLM, hf: torch.nn.Module, prompt: torch.Tensor, new: torch.Tensor) -> list[Runner]:
    """Prefill and decode runners of both sides; the decode runners start from a prefilled cache."""
    cfg, batch = ours.cfg, prompt.shape[0]
    capacity = prompt.shape[1] + new.shape[1]

    def eval_modes() -> None:
        ours.eval()
        hf.eval()

    @torch.no_grad()
    def ours_prefill() -> tuple[torch.Tensor, KVCache]:
        cache = KVCache.allocate(cfg, batch, capacity, prompt.device, ours.embed.weight.dtype)
        hidden, cache = ours.hidden_states(prompt, cache=cache)
        return hidden[:, -1:] @ ours.head_weight.t(), cache

    @torch.no_grad()
    def hf_prefill() -> tuple[torch.Tensor, Any]:
        out = hf(input_ids=prompt, use_cache=True, logits_to_keep=1)
        return out.logits, out.cache

    state: dict[str, Any] = {}

    def ours_ready() -> None:
        eval_modes()
        if "ours" not in state:
            state["ours"] = ours_prefill()[1]  # immutable: every decode starts from the same length

    def hf_ready() -> None:
        eval_modes()
        if "hf" not in state:
            state["hf"] = hf_prefill()[1]
        state["hf_now"] = copy.deepcopy(state["hf"])  # DynamicCache grows in place

    @torch.no_grad()
    def ours_decode() -> None:
        cache = state["ours"]
        for t in range(new.shape[1]):
            _, cache = ours(new[:, t : t + 1], cache=cache, validate=False)

    @torch.no_grad()
    def hf_decode() -> None:
        cache = state["hf_now"]
        for t in range(new.shape[1]):
            hf(input_ids=new[:, t : t + 1], cache=cache, use_cache=True)

    return [Runner("prefill/ours", eval_modes, ours_prefill), Runner("prefill/hf", eval_modes, hf_prefill),
            Runner("decode/ours", ours_ready, ours_decode, new.shape[1]),
            Runner("decode/hf", hf_ready, hf_decode, new.shape[1])]


def build_pair(shape: Shape) -> tuple[CausalLM, torch.nn.Module, float]:
    """Our baseline at ``shape``, the ``LlamaForCausalLM`` converted from it, and their largest logit gap."""
    from recipes.interop.convert import to_hf  # needs transformers; imported only to run

    torch.manual_seed(0)
    ours = CausalLM(shape.config()).eval()
    hf = to_hf(ours).eval()
    x = torch.randint(0, ours.cfg.vocab_size, (1, min(32, shape.seq_len)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = (ours(x).logits - hf(input_ids=x).logits).abs().max().item()
    if gap > 1e-3:
        raise RuntimeError(f"the converted model computes something else: logits differ by {gap:.2e}")
    return ours, hf, gap


def measure(shape: Shape) -> tuple[list[dict[str, Any]], float]:
    """One row per task (ours and HF times, ours ÷ HF), and the two models' largest logit gap."""
    ours, hf, gap = build_pair(shape)
    gen = torch.Generator().manual_seed(0)
    vocab = ours.cfg.vocab_size
    tokens = torch.randint(0, vocab, (shape.batch, shape.seq_len + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]
    prompt = torch.randint(0, vocab, (shape.batch, shape.prompt_len), generator=gen)
    new = torch.randint(0, vocab, (shape.batch, shape.new_tokens), generator=gen)
    runners = [train_runner("train/ours", ours, chunked_lm_loss, x, y), train_runner("train/hf", hf, lm_loss, x, y),
               train_runner("train[lm_loss]/ours", ours, lm_loss, x, y),
               train_runner("train[lm_loss]/hf", hf, lm_loss, x, y), *inference_runners(ours, hf, prompt, new)]
    for runner in runners:  # AdamW state, caches and the allocator settle before anything is timed
        for _ in range(shape.warmup):
            runner.prepare()
            runner.step()
    times = time_interleaved(runners, shape.rounds, shape.steps)
    rows = []
    for task in TASKS:
        mine, theirs = times[f"{task}/ours"], times[f"{task}/hf"]
        ratio, spread = round_ratio(mine, theirs, 0)
        rows.append({"task": task, "ours_ms": 1e3 * statistics.median(s[0] for r in mine for s in r),
                     "hf_ms": 1e3 * statistics.median(s[0] for r in theirs for s in r),
                     "ratio": ratio, "spread": spread, "met": ratio <= 1.0})
    return rows, gap


#: What the ``ms`` columns time, by task.
UNITS = {"train": "step", "train[lm_loss]": "step", "prefill": "prompt", "decode": "token"}


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table: each task's times and ratio, and whether it meets the ≤ 1.0× target."""
    lines = ["| task | ours ms | HF ms | ours ÷ HF | target ≤ 1.0× |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} (per {UNITS[r['task']]}) | {r['ours_ms']:.2f} | {r['hf_ms']:.2f} | "
                     f"{r['ratio']:.3f} ± {r['spread']:.3f} | {'met' if r['met'] else 'not met'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=list(SIZES))
    p.add_argument("--layers", type=int_at_least(1), default=None, help="default: the size's")
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument("--seq-len", type=positive_int, default=512, help="train tokens per row")
    p.add_argument("--prompt-len", type=positive_int, default=256)
    p.add_argument("--new-tokens", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--steps", type=positive_int, default=2, help="timed calls per runner per round")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny size, 2 layers, batch 2, 32 train tokens, prompt 16, 4 new tokens, 5 rounds")
    p.add_argument("--out", type=writable("directory"), default="runs/bench_hf")
    return p


def shape_of(args: argparse.Namespace) -> Shape:
    if args.quick:
        return Shape("tiny", 2, batch=2, seq_len=32, prompt_len=16, new_tokens=4, rounds=5, steps=2)
    return Shape(args.size, args.layers, args.batch, args.seq_len, args.prompt_len, args.new_tokens,
                 rounds=args.rounds, steps=args.steps)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser, {"n_layers": "--layers", "seq_len": "--seq-len", "prompt_len": "--prompt-len",
                              "new_tokens": "--new-tokens"}):
        shape = shape_of(args)
        shape.config()
    torch.set_num_threads(args.threads)
    machine = describe_machine("cpu", args.threads)
    print(f"{machine}\n{shape}", flush=True)
    t0 = time.perf_counter()
    rows, gap = measure(shape)
    cfg = shape.config()
    config = {**shape.__dict__, "quick": args.quick, "threads": args.threads, "d_model": cfg.d_model,
              "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff,
              "vocab_size": cfg.vocab_size, "transformers": _transformers_version()}
    report = write_results(args.out, machine, config, time.perf_counter() - t0, rows, max_logit_gap=gap)
    print(format_rows(rows), f"\nwrote {args.out}/results.json in {report['seconds']:.0f} s", flush=True)
    return report


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    main()
