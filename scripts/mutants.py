"""Targeted mutation check: does the test suite notice when the core code is wrong?

Each mutant replaces one exact snippet of a core module (strategies, kernel references, blocks,
model, checkpoint, the training recipe, sampling, shards) with a plausible bug. For every mutant the script applies it to a temporary
copy of the repository, runs the tests that cover that module (``pytest -x``: the first failure
kills the mutant) and restores the file. A mutant that every test passes *survives*: either a
test is missing or the mutant does not change behaviour (then say why in ``EQUIVALENT``).

    python scripts/mutants.py                 # all mutants against the working tree
    python scripts/mutants.py --ref main      # the same mutants against another commit's code and tests
    python scripts/mutants.py --only model    # mutants whose name contains "model"

Not run in CI (it is slow); run it after changing a core module or its tests. A snippet that no
longer occurs exactly once is reported as stale, so the list cannot silently rot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]

# Fast files first: with -x most mutants die in the first seconds; test_model.py (compiles) runs last.
MODEL_TESTS = ("tests/test_reference_model.py", "tests/test_value_strategies.py", "tests/test_analyze.py",
               "tests/test_fused_qkv_gate.py", "tests/test_model.py")
DENSE_TESTS = ("tests/test_reference_model.py", "tests/test_dense_strategies.py", "tests/test_model.py")
KERNEL_TESTS = ("tests/test_kernels.py", "tests/test_reference_model.py", "tests/test_value_strategies.py",
                "tests/test_dense_strategies.py")
CKPT_TESTS = ("tests/test_checkpoint.py",)
STUDY_TESTS = ("tests/test_study.py", "tests/test_study_stats.py")
CLI_TESTS = ("tests/test_cli_errors.py",)
TRAIN_TESTS = ("tests/test_train_arithmetic.py",)
SAMPLING_TESTS = ("tests/test_sampling.py",)
SHARD_TESTS = ("tests/test_shards.py",)
ATTNRES_TESTS = ("tests/test_attention_residuals.py", "tests/test_reference_model.py")
LERP_TESTS = ("tests/test_lerp_value_residual.py", "tests/test_reference_model.py", "tests/test_model.py")
SHORTCUT_TESTS = ("tests/test_embedding_shortcut.py", "tests/test_reference_model.py")
CONVERT_TESTS = ("tests/test_convert.py",)
HF_PATCH_TESTS = ("tests/test_hf_patch.py",)
VEMBED_TESTS = ("tests/test_value_embeddings.py", "tests/test_reference_model.py")
MHC_TESTS = ("tests/test_mhc.py", "tests/test_reference_model.py")
LADDER_TESTS = ("tests/test_ladder_report.py",)
BENCH_TESTS = ("tests/test_bench.py",)


class Mutant(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


STRATEGIES = "value_routing/strategies/"
MUTANTS = [
    # model
    Mutant("model: V1 from layer 1", STRATEGIES + "base.py", "        if layer == 0:\n            # V1",
           "        if layer <= 1:\n            # V1", MODEL_TESTS),
    Mutant("model: V1 detached", STRATEGIES + "base.py", "return v, v.contiguous()", "return v, v.detach()", MODEL_TESTS),
    Mutant("model: last block_output skipped", "recipes/lm/model.py", "x = self.norm(inp.x)", "x = self.norm(y)", DENSE_TESTS),
    Mutant("model: registered block ignored", "recipes/lm/model.py", "BLOCKS.lookup(cfg.block)", 'BLOCKS.lookup("transformer")',
           ("tests/test_registries.py",)),
    Mutant("attention: registered backend ignored", "value_routing/attention/backends.py",
           "ATTENTION_BACKENDS.lookup(name)(device)", 'ATTENTION_BACKENDS.lookup("sdpa")(device)',
           ("tests/test_registries.py", "tests/test_attention.py")),
    Mutant("model: cache length off by one", "recipes/lm/model.py", "KVCache(cache.layers, offset + seq, cache.keep",
           "KVCache(cache.layers, offset + seq - (seq > 1), cache.keep", MODEL_TESTS),
    Mutant("model: output projections not scaled at init", "recipes/lm/config.py",
           "c.init_std / math.sqrt(2 * c.n_layers)", "c.init_std", MODEL_TESTS),
    # blocks
    Mutant("blocks: RMSNorm without eps", STRATEGIES + "base.py", "keepdim=True) + eps)", "keepdim=True))", MODEL_TESTS),
    Mutant("blocks: RoPE rotation sign", "blocks/layers.py", "x2 * c + x1 * s", "x2 * c - x1 * s", MODEL_TESTS),
    Mutant("blocks: RoPE frequencies", "blocks/layers.py", "dtype=torch.float64) / head_dim)",
           "dtype=torch.float64) / (head_dim + 2))", MODEL_TESTS),
    Mutant("blocks: SwiGLU gate/up swapped", "blocks/layers.py", "F.silu(gate) * up", "F.silu(up) * gate", MODEL_TESTS),
    Mutant("blocks: k normed with q_norm", "blocks/attention.py", "self.q_norm(q), self.k_norm(k)",
           "self.q_norm(q), self.q_norm(k)", MODEL_TESTS),
    Mutant("blocks: mixed values dropped", "blocks/block.py", "v, state = strategy.mix_value(",
           "_, state = strategy.mix_value(", MODEL_TESTS),
    Mutant("blocks: raw v in the KV cache", "blocks/attention.py", "cache.v[:, start:end] = v",
           "cache.v[:, start:end] = v.detach() * 0", MODEL_TESTS),
    Mutant("blocks: LayerNorm Scaling depth off by one", "recipes/lm/config.py", "1 / math.sqrt(layer + 1) if",
           "1 / math.sqrt(layer + 2) if", ("tests/test_reference_model.py",)),
    Mutant("blocks: LayerNorm Scaling skips the MLP input", "blocks/block.py", "self.ffn(self._pre(self.ffn_norm, a))",
           "self.ffn(self.ffn_norm(a))", ("tests/test_reference_model.py",)),
    Mutant("blocks: Peri-LN attention output not normed", "blocks/block.py", "attn = self._post(self.attn_out_norm,",
           "attn = self._post(None,", ("tests/test_reference_model.py",)),
    Mutant("blocks: key stream not normed", "blocks/block.py", "else self._pre(norm, inp.k)", "else inp.k", DENSE_TESTS),
    # static value residual
    Mutant("checks: a NaN option passes", STRATEGIES + "checks.py",
           "not isinstance(value, bool) and math.isfinite(value)", "not isinstance(value, bool)",
           ("tests/test_strategy_arguments.py",)),
    Mutant("checks: a strict bound is not strict", STRATEGIES + "checks.py",
           "ok = value > minimum if strict else value >= minimum", "ok = value >= minimum",
           ("tests/test_strategy_arguments.py",)),
    Mutant("static: lambda index shifted", STRATEGIES + "static_residual.py", "lam1[layer - 1].to(v.dtype)",
           "lam1[layer - 2].to(v.dtype)", MODEL_TESTS),
    Mutant("static: sigmoid instead of softmax", STRATEGIES + "static_residual.py",
           "torch.softmax(self.lambda_logits, dim=0)", "torch.sigmoid(self.lambda_logits)", MODEL_TESTS),
    Mutant("static: layer 1 unmixed", STRATEGIES + "static_residual.py", "    def mix_v1(self, layer, v, v1, h, logits=None):\n",
           "    def mix_v1(self, layer, v, v1, h, logits=None):\n        if layer == 1:\n            return v\n", MODEL_TESTS),
    # selective gate
    Mutant("satformer: last_k gates one layer fewer", STRATEGIES + "selective_gate.py",
           "else n_layers - last_k", "else n_layers - last_k + 1", MODEL_TESTS),
    Mutant("satformer: wrong gate index", STRATEGIES + "selective_gate.py", "proj = self.gates[layer - self.first_gated]",
           "proj = self.gates[layer - 1]", MODEL_TESTS),
    Mutant("satformer: bias dropped when fused", STRATEGIES + "selective_gate.py", "logits = logits + proj.bias",
           "logits = logits", MODEL_TESTS),
    # kernel references
    Mutant("gate_mix: gate multiplies v", "value_routing/kernels/gate_mix.py",
           "gate_activation(logits, act).unsqueeze(-1) * v1", "gate_activation(logits, act).unsqueeze(-1) * v", KERNEL_TESTS),
    Mutant("gate_mix: softmax gate not scaled by heads", "value_routing/kernels/gate_mix.py",
           ".to(logits.dtype) * heads", ".to(logits.dtype)", KERNEL_TESTS),
    Mutant("depth_aggregate: weights transposed", "value_routing/kernels/depth_aggregate.py",
           '"btsj,jbtd->sbtd", weights', '"btjs,jbtd->sbtd", weights', KERNEL_TESTS),
    Mutant("depth_aggregate: static GEMM reads slot 0 only", "value_routing/kernels/depth_aggregate.py",
           "weights[0, 0].to(states.dtype) @ states.flatten(1)",
           "weights[0, 0].to(states.dtype)[:, :1] @ states.flatten(1)[:1]", KERNEL_TESTS),
    # dense strategies and their state buffer
    Mutant("dense: dilation counted from 0", STRATEGIES + "dense.py", "range(depth % self.dilation, depth + 1",
           "range(0, depth + 1", DENSE_TESTS),
    Mutant("dense: period offset", STRATEGIES + "dense.py", "if depth % self.period:", "if (depth + 1) % self.period:", DENSE_TESTS),
    Mutant("dense: init not identity", STRATEGIES + "dense.py", "alpha[-1] = 1.0", "alpha[0] = 1.0", DENSE_TESTS),
    Mutant("depth_states: slot gradient dropped", STRATEGIES + "depth_states.py", "return None, grad, None",
           "return None, grad * 0, None", DENSE_TESTS),
    Mutant("depth_states: static weight gradient transposed", STRATEGIES + "depth_states.py",
           "(grad.flatten(1) @ states_g.flatten(1).T).view(weights.shape)",
           "(states_g.flatten(1) @ grad.flatten(1).T).T.contiguous().view(weights.shape) * 0.5", DENSE_TESTS),
    Mutant("depth_states: weighted sum skips the last state", STRATEGIES + "depth_states.py",
           "for j in range(1, len(states)):", "for j in range(1, len(states) - 1):", DENSE_TESTS),
    Mutant("mudd: q and k streams swapped", STRATEGIES + "mudd.py", "return BlockInput(r, q, k, v), state",
           "return BlockInput(r, k, q, v), state", DENSE_TESTS),
    Mutant("mudd: relu instead of gelu", STRATEGIES + "mudd.py", "F.gelu(self.w1[layer](x) * rstd)",
           "F.relu(self.w1[layer](x) * rstd)", DENSE_TESTS),
    Mutant("mudd: norm without eps", STRATEGIES + "mudd.py", "keepdim=True) + self.norm_eps).to(x.dtype)",
           "keepdim=True)).to(x.dtype)", DENSE_TESTS),
    Mutant("mudd: init on the oldest state", STRATEGIES + "mudd.py", "static[:, -1] = 1.0", "static[:, 0] = 1.0", DENSE_TESTS),
    Mutant("hyper: init A_m on stream 0", STRATEGIES + "hyper_connections.py", "alpha[m % rate, 0] = 1.0",
           "alpha[0, 0] = 1.0", DENSE_TESTS),
    Mutant("hyper: mean of streams at the end", STRATEGIES + "hyper_connections.py", "hyper.sum(0).to(x.dtype)",
           "hyper.mean(0).to(x.dtype)", DENSE_TESTS),
    Mutant("hyper: s_beta scales alpha", STRATEGIES + "hyper_connections.py", "alpha = s_alpha * dyn", "alpha = s_beta * dyn",
           DENSE_TESTS),
    Mutant("hyper: our T drops the attention output", STRATEGIES + "hyper_connections.py",
           "out, m = state.pending.to(", "out, m = 0 * state.pending.to(", DENSE_TESTS),
    Mutant("hyper: norm without eps", STRATEGIES + "hyper_connections.py", "keepdim=True) + self.eps(dtype or hyper.dtype))",
           "keepdim=True))", DENSE_TESTS),
    Mutant("mudd authors: + X_i dropped", STRATEGIES + "mudd.py", "rms_normalize(summed, self.norm_eps) + y, states",
           "rms_normalize(summed, self.norm_eps), states", DENSE_TESTS),
    Mutant("mudd authors: pre-norm scales ignored", STRATEGIES + "mudd.py", "self.weights(layer, y), scales=pre)",
           "self.weights(layer, y), scales=pre * 0 + 1)", DENSE_TESTS),
    Mutant("hyper authors: norm scale g ignored", STRATEGIES + "hyper_connections.py",
           "else self.proj[m] * self.norm_scale[m]", "else self.proj[m]", DENSE_TESTS),
    Mutant("hyper authors: MLP reuses the attention connection", STRATEGIES + "hyper_connections.py",
           "m = 2 * layer + sublayer + 1", "m = 2 * layer + 2 * sublayer", DENSE_TESTS),
    # checkpoint
    Mutant("checkpoint: resume skips the RNG restore", "recipes/train/checkpoint.py",
           'set_rng_state(load_file(str(rng_path)), read_metadata(rng_path)["rng"])', "None", CKPT_TESTS),
    Mutant("checkpoint: RNG not restored", "recipes/train/checkpoint.py", "    torch.set_rng_state(tensors[\"torch\"])",
           "    pass", CKPT_TESTS),
    Mutant("checkpoint: numpy RNG not restored", "recipes/train/checkpoint.py", "    np.random.set_state(",
           "    (lambda *a: None)(", CKPT_TESTS),
    Mutant("checkpoint: python RNG not restored", "recipes/train/checkpoint.py", "    random.setstate(",
           "    (lambda *a: None)(", CKPT_TESTS),
    Mutant("checkpoint: optimizer state not loaded", "recipes/train/checkpoint.py", "if optimizer is not None:", "if False:",
           CKPT_TESTS),
    Mutant("checkpoint: keeps one too many", "recipes/train/checkpoint.py", "checkpoint_dirs(root)[:-keep]",
           "checkpoint_dirs(root)[:-keep - 1]", CKPT_TESTS),
    Mutant("checkpoint: oldest taken as latest", "recipes/train/checkpoint.py", "return dirs[-1] if dirs", "return dirs[0] if dirs",
           CKPT_TESTS),
    Mutant("integrity: SHA-256 not compared", "recipes/train/integrity.py", 'if sha256(file) != record["sha256"]:',
           "if False:", CKPT_TESTS),
    Mutant("integrity: size not compared", "recipes/train/integrity.py", 'if file.stat().st_size != record["bytes"]:',
           "if False:", CKPT_TESTS),
    Mutant("integrity: missing file not named", "recipes/train/integrity.py", "        if not file.is_file():",
           "        if False:", CKPT_TESTS),
    # the training recipe: schedule, shared train step, optimizer, pretraining
    Mutant("train: warmup shifted by one step", "recipes/train/optim.py", "cfg.lr * (step + 1) / cfg.warmup",
           "cfg.lr * step / cfg.warmup", TRAIN_TESTS),
    Mutant("train: cosine floor dropped", "recipes/train/optim.py",
           "cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5", "cfg.lr * (0 + 1 * 0.5", TRAIN_TESTS),
    Mutant("train: clip removed from the shared step", "recipes/train/loop.py",
           "torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)", "None", TRAIN_TESTS),
    Mutant("train: accumulation summed instead of averaged", "recipes/train/loop.py", "(loss / n).backward()",
           "loss.backward()", TRAIN_TESTS),
    Mutant("train: step loss is the last micro-batch's", "recipes/train/loop.py", "    return total / n",
           "    return loss.detach().float()", TRAIN_TESTS),
    Mutant("train: the step ignores the schedule", "recipes/train/loop.py", 'group["lr"] = lr_at(step, cfg)',
           'group["lr"] = cfg.lr', TRAIN_TESTS),
    Mutant("train: decay on norms", "recipes/train/optim.py", '{"params": no_decay, "weight_decay": 0.0}',
           '{"params": no_decay, "weight_decay": cfg.weight_decay}', TRAIN_TESTS),
    Mutant("train: decay 'all' ignored", "recipes/train/optim.py", 'everything = cfg.decay == "all"',
           "everything = False", TRAIN_TESTS),
    Mutant("pretrain: micro-batches overlap", "recipes/train/pretrain.py", "train_windows.batch(first + m * cfg.micro_batch,",
           "train_windows.batch(first + m,", TRAIN_TESTS),
    Mutant("pretrain: data position off by one batch", "recipes/train/pretrain.py", 'state = {"samples": samples,',
           'state = {"samples": samples - cfg.micro_batch,', TRAIN_TESTS),
    Mutant("optim: a min_lr_ratio above 1 let through", "recipes/train/optim.py",
           "if not 0 <= self.min_lr_ratio <= 1:", "if not 0 <= self.min_lr_ratio:", TRAIN_TESTS),
    Mutant("optim: a zero clip let through", "recipes/train/optim.py",
           "if not self.grad_clip > 0:", "if not self.grad_clip >= 0:", TRAIN_TESTS),
    Mutant("pretrain: eval windows drawn at random", "recipes/train/pretrain.py",
           "x, y = val.batch(min(index, cfg.eval_batches - 1) * cfg.micro_batch, cfg.micro_batch)",
           "x, y = val.batch(random.randrange(len(val)), cfg.micro_batch)", TRAIN_TESTS),
    Mutant("pretrain: eval scores the world-rounded batch count", "recipes/train/pretrain.py",
           "if index < cfg.eval_batches:", "if True:", TRAIN_TESTS),
    # generation's sampling rules
    Mutant("sampling: temperature ignored", "recipes/lm/generate.py", "logits = logits.float() / temperature",
           "logits = logits.float()", SAMPLING_TESTS),
    Mutant("sampling: top-k keeps one too many", "recipes/lm/generate.py", "min(top_k, logits.shape[-1])",
           "min(top_k + 1, logits.shape[-1])", SAMPLING_TESTS),
    Mutant("sampling: top-k ignored", "recipes/lm/generate.py", "    if top_k is not None:\n        kth",
           "    if False:\n        kth", SAMPLING_TESTS),
    Mutant("sampling: generation past max_seq_len let through", "recipes/lm/generate.py",
           "    if total > model.cfg.max_seq_len:", "    if False:", SAMPLING_TESTS),
    Mutant("sampling: a NaN temperature let through", "recipes/lm/generate.py",
           "not 0 <= temperature < math.inf", "temperature < 0", SAMPLING_TESTS),
    # shards and the window sampler
    Mutant("windows: batch rows one sample late", "recipes/data/shards.py", "self.window(start + i) for i in range(rows)",
           "self.window(start + i + 1) for i in range(rows)", SHARD_TESTS),
    Mutant("windows: unshuffled windows shuffled", "recipes/data/shards.py", "        if self.shuffle:\n            key",
           "        if True:\n            key", SHARD_TESTS),
    Mutant("shards: bytes beyond the header's count accepted", "recipes/data/shards.py",
           "if size != HEADER_BYTES + count * dtype.itemsize:", "if size < HEADER_BYTES + count * dtype.itemsize:",
           SHARD_TESTS),
    Mutant("shards: magic unchecked with fmt=llmc", "recipes/data/shards.py", '(fmt == "auto" and magic not in FORMATS)',
           "(magic not in FORMATS)", SHARD_TESTS),
    Mutant("shards: version unchecked", "recipes/data/shards.py", "if version != want_version:", "if False:", SHARD_TESTS),
    # HF wrapper and the study's statistics
    Mutant("hf: RoPE tables not rebuilt after from_pretrained", "recipes/interop/hf.py", "            module.reset_rope()",
           "            pass", ("tests/test_hf.py",)),
    Mutant("study: unpaired Δ (means of all seeds)", "recipes/experiments/study_report.py",
           "return mean_ci([values[s] - base[s] for s in seeds]) if seeds else None",
           "return mean_ci([values[s] - sum(base.values()) / len(base) for s in seeds]) if seeds else None", STUDY_TESTS),
    Mutant("study: accuracy AUC from the final point", "recipes/experiments/study_report.py",
           "return sum(a for _, a in curve) / len(curve) if curve else None", "return curve[-1][1] if curve else None",
           STUDY_TESTS),
    Mutant("study: solved step one evaluation late", "recipes/experiments/study_report.py",
           "if a >= SOLVED), None)", "if a > SOLVED), None)", STUDY_TESTS),
    Mutant("study: wall time ignores overlap", "recipes/experiments/study_report.py",
           "total += end - max(start, reach)", "total += end - start", STUDY_TESTS),
    Mutant("study: accuracy curve evaluated one step early", "recipes/experiments/study_run.py",
           '== "mqar" and n in ends:', '== "mqar" and n + 1 in ends:', STUDY_TESTS),
    # benchmark timing
    Mutant("bench: per_call ignored on CPU", "recipes/bench/measure.py",
           "times.append((wall / per_call, (c1[0] - c0[0]) / per_call", "times.append((wall, (c1[0] - c0[0]) / per_call",
           BENCH_TESTS),
    Mutant("bench: prepare timed", "recipes/bench/measure.py",
           "        c0 = counters.read() if counters else (math.nan, math.nan)\n        t0 = time.perf_counter()\n        runner.step()",
           "        c0 = counters.read() if counters else (math.nan, math.nan)\n        t0 = time.perf_counter()\n"
           "        if prepare is not None:\n            prepare()\n        runner.step()", BENCH_TESTS),
    # a study run's mid-run checkpoint: resume exactly where it stopped
    Mutant("study: resume without the data generator's state", "recipes/experiments/study_run.py",
           '            _set_generator_state(gen, state["gen"])\n', "", STUDY_TESTS),
    Mutant("study: resume without the optimiser's state", "recipes/experiments/study_run.py",
           "state = load_checkpoint(last, model, opt)", "state = load_checkpoint(last, model)", STUDY_TESTS),
    Mutant("study: checkpoint saved one step early", "recipes/experiments/study_run.py",
           "if path is not None and n % every == 0 and n < cfg.steps:",
           "if path is not None and (n + 1) % every == 0 and n < cfg.steps:", STUDY_TESTS),
    Mutant("study: finished run's checkpoint kept", "recipes/experiments/study.py",
           '            shutil.rmtree(partial_path(out, result["spec"]), ignore_errors=True)\n', "", STUDY_TESTS),
    Mutant("train: resumed loop restarts at step 0", "recipes/train/loop.py",
           "bar = tqdm(range(len(losses), cfg.steps)", "bar = tqdm(range(0, cfg.steps - len(losses))", TRAIN_TESTS),
    # the budget ladder's evidence report
    Mutant("ladder: contrast reversed", "recipes/experiments/ladder_report.py",
           "est = paired_delta({s: r[key] for s, r in cells[a].items()}, {s: r[key] for s, r in cells[b].items()})",
           "est = paired_delta({s: r[key] for s, r in cells[b].items()}, {s: r[key] for s, r in cells[a].items()})",
           LADDER_TESTS),
    Mutant("ladder: last-quarter drop from the first point", "recipes/experiments/ladder_report.py",
           "return float(quarter[1] - curve[-1][1])", "return float(curve[0][1] - curve[-1][1])", LADDER_TESTS),
    Mutant("ladder: probe Δ at the first depth", "recipes/experiments/ladder_report.py",
           'ref = {s: r["probe"]["accuracy"][-1][k] for s, r in base.items() if "probe" in r}',
           'ref = {s: r["probe"]["accuracy"][0][k] for s, r in base.items() if "probe" in r}', LADDER_TESTS),
    Mutant("ladder: head range over layers", "recipes/experiments/ladder_report.py",
           '"head_range": [_est([max(g["mean_alpha"][i]) - min(g["mean_alpha"][i]) for g in gates])',
           '"head_range": [_est([max(g["mean_alpha"][i]) - min(g["mean_alpha"][0]) for g in gates])', LADDER_TESTS),
    Mutant("ladder: domain Δ against the variant itself", "recipes/experiments/ladder_report.py",
           "delta = paired_delta(values, ref) if name != baseline else None\n            rows[domain]",
           "delta = paired_delta(values, values) if name != baseline else None\n            rows[domain]", LADDER_TESTS),
    Mutant("ladder: depth Δ from layer 0 to itself", "recipes/experiments/ladder_report.py",
           'per_layer(g, "mean_alpha", len(layers) - 1) - per_layer(g, "mean_alpha", 0)',
           'per_layer(g, "mean_alpha", 0) - per_layer(g, "mean_alpha", 0)', LADDER_TESTS),
    Mutant("ladder: category Δ against the recorded overall mean", "recipes/experiments/ladder_report.py",
           '- grid_mean(g["mean_alpha"], g)', '- g["overall"]["mean_alpha"]', LADDER_TESTS),
    Mutant("ladder: trend of the loss, not of the Δ", "recipes/experiments/ladder_report.py",
           'rows.setdefault(f"{name} − baseline", {})[key] = row["delta"]',
           'rows.setdefault(f"{name} − baseline", {})[key] = row["estimate"]', LADDER_TESTS),
    Mutant("ladder: trend plot's hollow point from the last rung", "recipes/experiments/ladder_render.py",
           "ref = row.get(pub_key) if pub is not None else None",
           "ref = list(row.values())[-1] if pub is not None else None", LADDER_TESTS),
    Mutant("ladder: variants in arrival order", "recipes/experiments/ladder_report.py",
           'cells = _by_variant(runs, list(summary["variants"]))', 'cells = _by_variant(runs)', LADDER_TESTS),
    # command-line tools: argparse's one-line errors (STYLE.md 15)
    Mutant("cli: pretrain's output paths unchecked", "recipes/train/pretrain_config.py",
           '        if getattr(cfg, name) is not None:\n            with user_errors(parser, flag=flags[name]):\n                check_writable',
           '        if False:\n            with user_errors(parser, flag=flags[name]):\n                check_writable', CLI_TESTS),
    Mutant("cli: a file where a directory is asked for passes", "recipes/lm/cli.py",
           'is_kind = os.path.isdir(target) if kind == "directory" else os.path.isfile(target)',
           'is_kind = os.path.exists(target)', CLI_TESTS),
    Mutant("cli: count 0 treated as unset", "recipes/train/pretrain_config.py",
           "accum = (d.grad_accum or max(1, d.global_batch_tokens // (seq_len * world * micro))\n"
           "             if args.grad_accum is None else args.grad_accum)",
           "accum = args.grad_accum or d.grad_accum or max(1, d.global_batch_tokens // (seq_len * world * micro))",
           CLI_TESTS),
    Mutant("cli: --set value not converted", "recipes/lm/cli.py", "return key, _convert(hints[key], text)",
           "return key, text", CLI_TESTS),
    Mutant("cli: config ValueError escapes as a traceback", "recipes/lm/cli.py",
           "except (ValueError, FileNotFoundError) as err:", "except FileNotFoundError as err:", CLI_TESTS),
    # Attention Residuals (attnres)
    Mutant("attnres: completed block also kept as the partial sum", STRATEGIES + "attention_residuals.py",
           "blocks, partial = append_depth_state(blocks, partial), None",
           "blocks, partial = append_depth_state(blocks, partial), partial", ATTNRES_TESTS),
    Mutant("attnres: block boundary one sublayer late", STRATEGIES + "attention_residuals.py",
           "if m % self.block_size == 0:", "if (m - 1) % self.block_size == 0 and m > 1:", ATTNRES_TESTS),
    Mutant("attnres: key-norm scale ignored", STRATEGIES + "attention_residuals.py",
           "u = self.queries[m - 1].to(dtype) * self.key_scales[m - 1].to(dtype)",
           "u = self.queries[m - 1].to(dtype)", ATTNRES_TESTS),
    Mutant("attnres: backward drops the key norm's term", STRATEGIES + "attention_residuals.py",
           "grads.append(a * grad + b1 * u - b2 * g)", "grads.append(a * grad + b1 * u)", ATTNRES_TESTS),
    Mutant("attnres: Block buffer sized like Full", STRATEGIES + "attention_residuals.py",
           "return 1 + 2 * self.n_layers // self.block_size", "return 1 + 2 * self.n_layers",
           ("tests/test_bench_depth.py",)),
    # lerp: x-transformers' learned value-residual mix
    Mutant("lerp: sigmoid weights V1, not the layer's own values", STRATEGIES + "lerp_value_residual.py",
           "return torch.lerp(v1, v, mu.unsqueeze(-1))", "return torch.lerp(v, v1, mu.unsqueeze(-1))", LERP_TESTS),
    Mutant("lerp: each layer reads the previous layer's gate", STRATEGIES + "lerp_value_residual.py",
           "self.gates[layer - 1](h)", "self.gates[layer - 2](h)", LERP_TESTS),
    Mutant("lerp: backward keeps the QKV output alive", STRATEGIES + "lerp_value_residual.py",
           "v, mu = v.contiguous(), self.mix(layer, h)", "mu = self.mix(layer, h)", LERP_TESTS),
    Mutant("lerp: init_std ignored", STRATEGIES + "lerp_value_residual.py",
           "nn.init.normal_(gate.weight, std=init_std)", "nn.init.normal_(gate.weight, std=0.02)", LERP_TESTS),
    # shortcut: modded-nanogpt's embedding shortcut
    Mutant("shortcut: block 0's input unmixed", STRATEGIES + "embedding_shortcut.py",
           "return self._enter(0, x0, x0), x0", "return BlockInput(x0), x0", SHORTCUT_TESTS),
    Mutant("shortcut: a block reads the previous block's lambdas", STRATEGIES + "embedding_shortcut.py",
           "return self._enter(layer + 1, y, state), state", "return self._enter(layer, y, state), state",
           SHORTCUT_TESTS),
    Mutant("shortcut: gate reads the unnormed stream", STRATEGIES + "embedding_shortcut.py",
           "(rms_normalize(x, self.norm_eps) @ self.gate_weight", "(x @ self.gate_weight", SHORTCUT_TESTS),
    Mutant("shortcut: layer 0's resid lambda everywhere", STRATEGIES + "embedding_shortcut.py",
           "self.resid_lambdas[layer].to(x.dtype)", "self.resid_lambdas[0].to(x.dtype)", SHORTCUT_TESTS),
    # checkpoint conversion (recipes/interop/convert.py) and the attention options it needs
    Mutant("convert: gate and up projections swapped in w13", "recipes/interop/convert.py",
           '(hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight")',
           '(hf + "mlp.up_proj.weight", hf + "mlp.gate_proj.weight")', CONVERT_TESTS),
    Mutant("convert: k and v rows swapped in wqkv", "recipes/interop/convert.py",
           'tuple(attn + f"{p}_proj.weight" for p in "qkv")', 'tuple(attn + f"{p}_proj.weight" for p in "qvk")',
           CONVERT_TESTS),
    Mutant("convert: rope_theta not carried over", "recipes/interop/convert.py", 'rope_theta=float(rope["rope_theta"])',
           "rope_theta=10000.0", CONVERT_TESTS),
    Mutant("convert: sliding window does not cap max_seq_len", "recipes/interop/convert.py",
           "limit = config.max_position_embeddings if window is None else min(window, config.max_position_embeddings)",
           "limit = config.max_position_embeddings", CONVERT_TESTS),
    Mutant("convert: separate q/k/v norms not from the pretrained norm", "recipes/interop/convert.py",
           'params[name].copy_(params[name.rsplit(".", 2)[0] + ".attn_norm.weight"])', "params[name].fill_(1.0)",
           CONVERT_TESTS),
    Mutant("blocks: q/k/v bias dropped on the fused path", "blocks/attention.py",
           "q, k, v, e = F.linear(hq, w, b).split(", "q, k, v, e = F.linear(hq, w).split(",
           ("tests/test_reference_model.py",)),
    Mutant("blocks: gate rows beside the bias get a bias", "blocks/attention.py",
           "torch.cat((bias, bias.new_zeros(n_extra)))", "torch.cat((bias, bias.new_ones(n_extra)))",
           ("tests/test_reference_model.py",)),
    # the Hugging Face adapter (value_routing.integrations.hf) and SATFormer's gate_scale, its preserving start
    Mutant("hf patch: raw values into the cache", "value_routing/integrations/hf.py",
           "return self.cache.update(key_states, v, layer_idx", "return self.cache.update(key_states, value_states, layer_idx",
           HF_PATCH_TESTS),
    Mutant("hf patch: block_output's input skipped", "value_routing/integrations/hf.py",
           "    _single_input(inp, spec.index)\n    return inp.x", "    _single_input(inp, spec.index)\n    return y",
           HF_PATCH_TESTS),
    Mutant("hf patch: checkpoint replays the pass's latest state", "value_routing/integrations/hf.py",
           "self._gradient_checkpointing_func(block, hidden_states, route.state)",
           "self._gradient_checkpointing_func(lambda x: block(x, route.state), hidden_states)", HF_PATCH_TESTS),
    Mutant("hf patch: gate reads the un-normed stream", "value_routing/integrations/hf.py",
           "ValueInlet(strategy, spec.index, h, state, cache)", "ValueInlet(strategy, spec.index, x, state, cache)",
           HF_PATCH_TESTS),
    Mutant("hf patch: gate_scale before the activation", STRATEGIES + "selective_gate.py",
           "self._scaled(layer, gate_activation(logits, self.act))", "gate_activation(self._scaled(layer, logits), self.act)",
           ("tests/test_reference_model.py", *HF_PATCH_TESTS)),
    # value_embed: modded-nanogpt's value embeddings
    Mutant("value_embed: gate σ instead of 2σ (starts at 1/2)", STRATEGIES + "value_embeddings.py",
           "return 2 * torch.sigmoid(inp @", "return torch.sigmoid(inp @", VEMBED_TESTS),
    Mutant("value_embed: gate reads the last channels of e", STRATEGIES + "value_embeddings.py",
           "e.flatten(-2)[..., :k]", "e.flatten(-2)[..., -k:]", VEMBED_TESTS),
    Mutant("value_embed: a layer reads the table of its gate's index (no sharing)", STRATEGIES + "value_embeddings.py",
           "table = self.tables[self.table_of[layer]]", "table = self.tables[min(self.gate_of[layer], len(self.tables) - 1)]",
           VEMBED_TESTS),
    Mutant("value_embed: shared pattern mirrored (U-net) instead of 012...012", STRATEGIES + "value_embeddings.py",
           "for layer in (j, L - k + j)", "for layer in (j, L - 1 - j)", VEMBED_TESTS),
    Mutant("value_embed: init_std ignored", STRATEGIES + "value_embeddings.py",
           "torch.randn(vocab_size, kv_dim) * self.init_std", "torch.randn(vocab_size, kv_dim) * 0.02", VEMBED_TESTS),
    # mHC, manifold-constrained hyper-connections (mhc)
    Mutant("mhc: Sinkhorn starts with the rows", STRATEGIES + "manifold_hyper_connections.py",
           "m = torch.softmax(logits, dim=-2) + eps", "m = torch.softmax(logits, dim=-1) + eps", MHC_TESTS),
    Mutant("mhc: one Sinkhorn iteration short", STRATEGIES + "manifold_hyper_connections.py",
           "for _ in range(iters - 1):", "for _ in range(max(iters - 2, 0)):", MHC_TESTS),
    Mutant("mhc: post without its factor 2", STRATEGIES + "manifold_hyper_connections.py",
           "post = 2 * torch.sigmoid(", "post = torch.sigmoid(", MHC_TESTS),
    Mutant("mhc: RMS of the first stream, not the flattened n·d stream", STRATEGIES + "manifold_hyper_connections.py",
           "hyper.pow(2).mean(dim=(0, -1))", "hyper[0].pow(2).mean(-1)", MHC_TESTS),
    Mutant("mhc: residual matrix transposed (V4's layout)", STRATEGIES + "manifold_hyper_connections.py",
           "torch.cat((pre.unsqueeze(-2), res), dim=-2)", "torch.cat((pre.unsqueeze(-2), res.transpose(-1, -2)), dim=-2)",
           MHC_TESTS),
    # hf2: the function-preserving starts of lerp, attnres, shortcut, value_embed; the HF cross-check
    Mutant("hf2: lerp mix_scale weighs V1 by mu, not 1 - mu", STRATEGIES + "lerp_value_residual.py",
           "self.mix_scales[layer - 1].to(mu.dtype) * (1 - mu)", "self.mix_scales[layer - 1].to(mu.dtype) * mu",
           ("tests/test_reference_model.py", *HF_PATCH_TESTS)),
    Mutant("hf2: attnres scale_by_sources forgets the partial sum", STRATEGIES + "attention_residuals.py",
           "h = h * (len(blocks.handles) + (partial is not None))", "h = h * len(blocks.handles)",
           (*HF_PATCH_TESTS, "tests/test_reference_model.py")),
    Mutant("hf2: shortcut's preserving start leaves x0_norm free", STRATEGIES + "embedding_shortcut.py",
           '{"x0_norm": False, "resid_init": 1.0, "x0_init": 0.0}', '{"resid_init": 1.0, "x0_init": 0.0}',
           HF_PATCH_TESTS),
    Mutant("hf2: value_embed ignores a decoupled head_dim", STRATEGIES + "value_embeddings.py",
           "self.head_dim = d_model // n_heads if head_dim is None else head_dim", "self.head_dim = d_model // n_heads",
           ("tests/test_hf_cross.py",)),
]

#: Tests left out: compiled == eager compares the model with itself (it cannot see a semantic
#: mutant) and compiling takes most of the time. The compiled-only code (the unrolled weighted
#: sum of the depth states) stays covered by the tests that select it with a mocked is_compiling.
DESELECT = ("not compile_fullgraph and not compiled_model and not fused_model_compiles "
            "and not dispatching_functions_compile")

#: Survivors that do not change behaviour, with the reason.
EQUIVALENT: dict[str, str] = {
}


def copy_tree(ref: str | None, dest: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files, or ``ref``'s tree."""
    if ref is None:
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split("\n")
        for name in filter(None, files):
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def run_mutant(m: Mutant, tree: Path, timeout: int) -> str:
    """``killed``, ``survived``, ``stale`` (snippet not found exactly once) or ``timeout`` (counts as killed)."""
    path = tree / m.path
    if not path.is_file():
        return "stale"
    original = path.read_text()
    if original.count(m.old) != 1:
        return "stale"
    tests = [t for t in m.tests if (tree / t).is_file()]
    path.write_text(original.replace(m.old, m.new))
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "VALUE_ROUTING_TYPECHECK": "1"}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-k", DESELECT, *tests]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        return "survived" if proc.returncode == 0 else "killed"
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        path.write_text(original)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default=None, help="a git commit/branch to test instead of the working tree")
    p.add_argument("--only", default="", help="run only mutants whose name contains this text")
    p.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = p.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only in m.name]
    results: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(args.ref, tree)
        for m in mutants:
            start = time.perf_counter()
            outcome = run_mutant(m, tree, args.timeout)
            results.setdefault(outcome, []).append(m.name)
            print(f"{outcome:>9}  {time.perf_counter() - start:6.1f} s  {m.name}", flush=True)
    survived = results.get("survived", [])
    print(f"\n{len(mutants)} mutants: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(results.items())))
    for name in survived:
        print(f"  survived: {name}" + (f"  (equivalent: {EQUIVALENT[name]})" if name in EQUIVALENT else ""))
    for name in results.get("stale", []):
        print(f"  stale (snippet not found exactly once): {name}")
    return 1 if any(n not in EQUIVALENT for n in survived) or results.get("stale") else 0


if __name__ == "__main__":
    sys.exit(main())
