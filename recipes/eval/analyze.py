r"""Where does SATFormer's gate open? Statistics of :math:`\alpha_n = \mathrm{act}(W_{\alpha,n} h_n)`.

For every gated layer and kv-head: the mean gate, the fraction of exact zeros (``relu`` switches
reuse off there), and the same split by the class of the input byte (newline, whitespace,
letter, first letter of a Python keyword, digit, punctuation/operator, other).

``python -m recipes.eval.analyze --out runs/gates`` trains a tiny SATFormer on the embedded corpus
for a few hundred steps (or loads ``--checkpoint``: a :mod:`recipes.train.checkpoint` directory or a
safetensors file; a bare state dict goes into the ``--size`` model) and writes ``gate_heatmap.png``, ``gate_by_class.png`` and ``summary.json`` into ``--out``.
From Python: ``write_report(analyze_gates(model, tokens), out_dir)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import keyword
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from recipes.lm.cli import flags_of, non_negative_int, positive_int, user_errors, writable
from recipes.lm.model import CausalLM
from value_routing.strategies import SelectiveGate, Strategy
from value_routing.typing import Float, Int, Tensor, shapecheck

#: Byte classes, in the order of the ids returned by :func:`token_classes`.
TOKEN_CLASSES: tuple[str, ...] = ("newline", "whitespace", "letter", "keyword", "digit", "punct", "other")

_KEYWORD_RE = re.compile(rb"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = frozenset(k.encode() for k in keyword.kwlist)


def _byte_class_table() -> Int[Tensor, " 257"]:
    """Class id of every byte value; index 256 collects ids outside the byte range."""
    table = torch.full((257,), TOKEN_CLASSES.index("other"), dtype=torch.long)
    for b in range(128):
        ch = chr(b)
        name = ("newline" if ch in "\r\n" else "whitespace" if ch in " \t\f\v" else
                "letter" if ch.isalpha() or ch == "_" else "digit" if ch.isdigit() else
                "punct" if 33 <= b <= 126 else "other")
        table[b] = TOKEN_CLASSES.index(name)
    return table


_BYTE_CLASS = _byte_class_table()


@shapecheck
def token_classes(tokens: Int[Tensor, "batch seq"]) -> Int[Tensor, "batch seq"]:
    """Class id (index into :data:`TOKEN_CLASSES`) of every byte token.

    ``keyword`` marks the first byte of a word that is a Python keyword (``def``, ``return``,
    ...); the rest of that word stays ``letter``. Tokens outside ``[0, 256)`` are ``other``.
    """
    classes = _BYTE_CLASS[tokens.clamp(0, 256).cpu()]
    kw = TOKEN_CLASSES.index("keyword")
    for row, seq in enumerate(tokens.cpu().tolist()):
        data = bytes(t if 0 <= t < 256 else 0 for t in seq)
        for m in _KEYWORD_RE.finditer(data):
            if m.group() in _KEYWORDS and m.end() < len(data):  # a word cut by the window is unknown
                classes[row, m.start()] = kw
    return classes.to(tokens.device)


@contextlib.contextmanager
def recorded_value_inputs(strategy: Strategy) -> Iterator[dict[int, Tensor]]:
    """``{layer: h}``: the normed tensor every block hands to ``strategy.mix_value`` as ``h``, recorded
    for the duration of the ``with`` (whatever the block; the strategy is restored on exit)."""
    seen: dict[int, Tensor] = {}
    original = strategy.mix_value

    def record(layer, v, h, state, logits=None):
        seen[layer] = h
        return original(layer, v, h, state, logits=logits)

    strategy.mix_value = record  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del strategy.mix_value


@torch.no_grad()
def gate_values(model: CausalLM, tokens: Int[Tensor, "batch seq"]) -> dict[int, Float[Tensor, "batch seq kv_heads"]]:
    """``{layer: α}`` for every gated layer of a SATFormer on ``tokens``."""
    gate = model.strategy
    if not isinstance(gate, SelectiveGate):
        raise ValueError(
            f"model.strategy must be a SelectiveGate (strategy 'satformer') to analyze gates, "
            f"got {type(gate).__name__} (strategy {model.cfg.strategy!r})"
        )
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
    was_training = model.training
    model.eval()
    try:
        with recorded_value_inputs(gate) as inputs:
            model(tokens)
    finally:
        model.train(was_training)
    return {layer: gate.gate(layer, inputs[layer]) for layer in range(model.cfg.n_layers) if gate.is_gated(layer)}


def _stats(alpha: Float[Tensor, "tokens layers heads"]) -> dict[str, Any]:
    """Mean α and fraction of exact zeros per layer × head (``None`` when there are no tokens)."""
    if alpha.shape[0] == 0:
        return {"count": 0, "mean_alpha": None, "frac_zero": None}
    return {
        "count": alpha.shape[0],
        "mean_alpha": alpha.mean(0).tolist(),
        "frac_zero": (alpha == 0).double().mean(0).tolist(),
    }


def analyze_gates(model: CausalLM, tokens: Int[Tensor, "batch seq"]) -> dict[str, Any]:
    """JSON-ready gate statistics of ``model`` on ``tokens`` (matrices are gated layer × kv-head)."""
    alphas = gate_values(model, tokens)
    layers = sorted(alphas)
    alpha = torch.stack([alphas[l] for l in layers], dim=-2).flatten(0, 1).double()  # (tokens, layers, heads)
    classes = token_classes(tokens).flatten()
    summary: dict[str, Any] = {
        "act": model.strategy.act,
        "gated_layers": layers,
        "n_kv_heads": model.cfg.n_kv_heads,
        "tokens": alpha.shape[0],
        **{k: v for k, v in _stats(alpha).items() if k != "count"},
        "overall": {
            "mean_alpha": alpha.mean().item(),
            "std_alpha": alpha.std().item() if alpha.numel() > 1 else 0.0,
            "min_alpha": alpha.min().item(),
            "max_alpha": alpha.max().item(),
            "frac_zero": (alpha == 0).double().mean().item(),
        },
        "per_class": {name: _stats(alpha[classes == i]) for i, name in enumerate(TOKEN_CLASSES)},
    }
    return summary


def write_report(summary: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, ``gate_heatmap.png`` and ``gate_by_class.png`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "heatmap": out / "gate_heatmap.png", "by_class": out / "gate_by_class.png"}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    layers, heads = summary["gated_layers"], range(summary["n_kv_heads"])

    fig, axes = plt.subplots(1, 2, figsize=(9, 1.5 + 0.45 * len(layers)), squeeze=False)
    for ax, key, title in zip(axes[0], ("mean_alpha", "frac_zero"), ("mean α", "fraction α = 0")):
        _heatmap(fig, ax, summary[key], [f"L{l}" for l in layers], [f"h{h}" for h in heads], title)
    fig.suptitle(f"SATFormer gate ({summary['act']}), {summary['tokens']:,} tokens")
    fig.tight_layout()
    fig.savefig(paths["heatmap"], dpi=120)
    plt.close(fig)

    present = [c for c, s in summary["per_class"].items() if s["count"]]
    cols = [f"L{l}h{h}" for l in layers for h in heads]
    by_class = [sum(summary["per_class"][c]["mean_alpha"], []) for c in present]
    fig, (bar, heat) = plt.subplots(1, 2, figsize=(5 + 0.5 * len(cols), 1.5 + 0.45 * len(present)),
                                    gridspec_kw={"width_ratios": [1, 2]})
    means = [sum(row) / len(row) for row in by_class]
    bar.barh(present, means, color="tab:blue")
    bar.invert_yaxis()
    bar.set_xlabel("mean α (all gated layers × heads)")
    _heatmap(fig, heat, by_class, present, cols, "mean α per token class")
    fig.tight_layout()
    fig.savefig(paths["by_class"], dpi=120)
    plt.close(fig)
    return paths


def _heatmap(fig, ax, values, rows: list[str], cols: list[str], title: str) -> None:
    im = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=90 if len(cols) > 8 else 0)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)


def train_tiny(steps: int, act: str = "relu", seed: int = 0) -> CausalLM:
    """A tiny SATFormer trained ``steps`` steps on the embedded corpus (as in the demo)."""
    from recipes.lm.builders import satformer
    from recipes.data import embedded_corpus, random_batch
    from recipes.train.loop import TrainConfig, train_step
    from recipes.train.optim import make_optimizer

    cfg = TrainConfig(steps=steps, warmup=min(TrainConfig.warmup, steps - 1), seed=seed)
    train, _ = embedded_corpus()
    torch.manual_seed(seed)
    model = CausalLM(satformer("tiny", act=act))
    opt, gen = make_optimizer(model, cfg), torch.Generator().manual_seed(seed)
    for step in range(steps):
        train_step(model, opt, step, cfg, [random_batch(train, cfg.batch_size, cfg.seq_len, gen)])
    return model


def build_parser() -> argparse.ArgumentParser:
    from recipes.lm.builders import SIZES
    from value_routing.kernels import GATE_ACTIVATIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory or .safetensors weights (default: train a tiny model)")
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--act", default="relu", choices=GATE_ACTIVATIONS)
    p.add_argument("--last-k", type=positive_int, default=None)
    p.add_argument("--steps", type=positive_int, default=300, help="training steps when no --checkpoint is given")
    p.add_argument("--batches", type=positive_int, default=8, help="validation windows of --seq-len bytes analysed")
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", type=writable("directory"), default="runs/gates")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from recipes.data import embedded_corpus, random_batch

    parser = build_parser()
    args = parser.parse_args(argv)
    flags = flags_of(parser)
    if args.checkpoint:
        from recipes.lm.builders import satformer
        from recipes.train.checkpoint import load_model

        # bare weights (no saved config) are taken to be a ``--size`` SATFormer with --act / --last-k
        with user_errors(parser, flags, flag="--checkpoint"):  # a missing file, a bad --last-k for the size
            model = load_model(args.checkpoint, config=satformer(args.size, act=args.act, last_k=args.last_k))
    elif args.last_k is not None:  # it was ignored: the demo's tiny SATFormer gates every layer
        parser.error("--last-k applies only to a --checkpoint of bare weights, not to the tiny model trained here")
    else:
        model = train_tiny(args.steps, args.act, args.seed)
    if args.seq_len > model.cfg.max_seq_len:
        parser.error(f"--seq-len must be <= the model's max_seq_len = {model.cfg.max_seq_len}, got {args.seq_len}")
    _, val = embedded_corpus()
    tokens, _ = random_batch(val, args.batches, args.seq_len, torch.Generator().manual_seed(args.seed))
    summary = analyze_gates(model, tokens)
    paths = write_report(summary, args.out)
    overall = summary["overall"]
    print(f"mean α {overall['mean_alpha']:.4f}, fraction zero {overall['frac_zero']:.3f} over "
          f"{summary['tokens']:,} tokens; wrote {', '.join(str(p) for p in paths.values())}")
    for name, stats in summary["per_class"].items():
        if stats["count"]:
            flat = sum(stats["mean_alpha"], [])
            print(f"  {name:<11}{stats['count']:>7} tokens  mean α {sum(flat) / len(flat):.4f}")
    return summary


if __name__ == "__main__":
    main()
