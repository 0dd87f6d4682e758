"""A Hugging Face Llama patched with each strategy ÷ the same model unpatched, side by side in one run (CPU).

``python -m recipes.bench.hf_patch [--strategies satformer hyper] [--hidden 256] [--layers 4] [--seq-len 256]
[--batch 4] [--decode-tokens 32] [--rounds 7] [--threads 2] [--quick] [--out DIR]``

Every variant is the same random-init ``LlamaForCausalLM`` (same seed, ``sdpa`` attention): one
left unpatched, the base of every ratio, the others patched by
:func:`~value_routing.apply_value_routing` at their function-preserving start (``baseline`` patched
is the adapter's own overhead). Measured per variant:

``train``
    one AdamW train step (forward with ``labels``, backward, step) on a fixed batch;
``memory``
    parameters, buffers and optimizer state plus the highest net allocation during one train step
    with gradients set to ``None`` first (:func:`recipes.bench.measure.peak_call_bytes`);
``prefill``
    a no-grad forward over the batch filling a fresh ``DynamicCache``, as tokens/s;
``decode``
    ``--decode-tokens`` single-token steps through the model's cache after a prefill (the cache
    is cropped back after each timed run), as tokens/s.

Times are taken in interleaved rounds (:func:`recipes.bench.measure.time_interleaved`: every round
runs every variant, the start rotating) and reported as the median over rounds of the per-round
ratio to ``unpatched``, ± half the inter-quartile range; throughput ratios are ``unpatched`` time ÷
variant time (> 1 is faster). Target (issue 20): ``satformer`` ≤ 1.05× train time, ≤ 1.02× memory.
Results go to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from recipes.bench.measure import peak_call_bytes, round_ratio, time_interleaved
from recipes.bench.report import describe_machine, write_results
from recipes.lm.cli import positive_int, writable
from value_routing import STRATEGIES, apply_value_routing

#: Strategies the adapter runs (MUDDFormer's separate q/k/v inputs are refused).
HF_STRATEGIES = tuple(s for s in STRATEGIES if not STRATEGIES[s].separate_qkv_inputs)
PHASES = ("train", "prefill", "decode")


def llama(hidden: int, layers: int, vocab: int, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=(8 * hidden // 3 + 63) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), max_position_embeddings=max_len,
                      num_key_value_heads=max(1, hidden // 128), attn_implementation="sdpa", pad_token_id=0,
                      bos_token_id=1, eos_token_id=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


class Phase:
    """One variant's phase as :func:`time_interleaved` wants it: ``label``, ``device``, ``step()``."""

    def __init__(self, label: str, step: Any) -> None:
        self.label, self.device, self.step = label, torch.device("cpu"), step


class HFRunner:
    """One variant: the model, its optimizer, the batch and a prefilled cache for decoding."""

    def __init__(self, label: str, args: argparse.Namespace, batch: torch.Tensor) -> None:
        self.label, self.batch, self.n_decode = label, batch, args.decode_tokens
        self.model = llama(args.hidden, args.layers, args.vocab, args.seq_len + args.decode_tokens + 1)
        if label != "unpatched":
            apply_value_routing(self.model, label)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.cache = self.prefill()
        self.next_token = batch[:, -1:]

    def train(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        self.model(input_ids=self.batch, labels=self.batch, use_cache=False).loss.backward()
        self.opt.step()

    @torch.no_grad()
    def prefill(self) -> Any:
        from transformers import DynamicCache

        self.model.eval()
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=self.batch, cache=cache, use_cache=True)
        return cache

    @torch.no_grad()
    def decode(self) -> None:
        self.model.eval()
        for _ in range(self.n_decode):
            self.model(input_ids=self.next_token, cache=self.cache, use_cache=True)
        self.cache.crop(-self.n_decode)

    def persistent_bytes(self) -> int:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per variant, ``unpatched`` first: absolute times and ratios to ``unpatched``."""
    batch = torch.randint(2, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    runners = [HFRunner(label, args, batch) for label in ["unpatched", *args.strategies]]
    for runner in runners:  # warm-up: AdamW state exists before anything is measured
        runner.train()
        runner.decode()
    times = {phase: time_interleaved([Phase(r.label, getattr(r, phase)) for r in runners], args.rounds, 1)
             for phase in PHASES}
    memory = {}
    for r in runners:
        r.opt.zero_grad(set_to_none=True)
        memory[r.label] = r.persistent_bytes() + peak_call_bytes(r.train, torch.device("cpu"))
    rows, base = [], "unpatched"
    tokens = {"prefill": args.batch * args.seq_len, "decode": args.batch * args.decode_tokens}
    for r in runners:
        median = {p: statistics.median(s[0] for t in times[p][r.label] for s in t) for p in PHASES}
        rel, spread = round_ratio(times["train"][r.label], times["train"][base], 0)
        row = {"variant": r.label, "ms_per_train_step": 1e3 * median["train"], "rel_train_time": rel,
               "train_spread": spread, "peak_bytes": memory[r.label], "rel_memory": memory[r.label] / memory[base]}
        for p in ("prefill", "decode"):
            rel, spread = round_ratio(times[p][base], times[p][r.label], 0)  # base / variant time = throughput ratio
            row.update({f"{p}_tokens_per_s": tokens[p] / median[p], f"rel_{p}_tokens_per_s": rel, f"{p}_spread": spread})
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | train ms | train time ÷ unpatched | memory ÷ unpatched | prefill tok/s ÷ unpatched | "
             "decode tok/s ÷ unpatched |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['ms_per_train_step']:.1f} | {r['rel_train_time']:.3f} ± "
                     f"{r['train_spread']:.3f} | {r['rel_memory']:.3f} | {r['rel_prefill_tokens_per_s']:.3f} ± "
                     f"{r['prefill_spread']:.3f} | {r['rel_decode_tokens_per_s']:.3f} ± {r['decode_spread']:.3f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", choices=HF_STRATEGIES, default=list(HF_STRATEGIES))
    p.add_argument("--hidden", type=positive_int, default=256, help="hidden size (heads of 64, kv-heads of 128)")
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--vocab", type=positive_int, default=4096)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--decode-tokens", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 64, 2 layers, seq 16, 2 rounds")
    p.add_argument("--out", type=writable("directory"), default="runs/bench_hf_patch")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.vocab, args.seq_len, args.batch, args.decode_tokens, args.rounds = (
            64, 2, 128, 16, 2, 4, 2)
    torch.set_num_threads(args.threads)
    machine = describe_machine("cpu", args.threads)
    print(f"{machine}\nLlama hidden {args.hidden}, {args.layers} layers, batch {args.batch}, seq {args.seq_len}, "
          f"decode {args.decode_tokens}, {args.rounds} rounds", flush=True)
    t0 = time.perf_counter()
    rows = measure(args)
    config = {k: getattr(args, k) for k in ("strategies", "hidden", "layers", "vocab", "seq_len", "batch",
                                            "decode_tokens", "rounds", "threads")}
    report = write_results(args.out, machine, config, time.perf_counter() - t0, rows)
    print(format_rows(rows), flush=True)
    return report


if __name__ == "__main__":
    main()
