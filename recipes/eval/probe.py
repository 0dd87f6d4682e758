r"""A lexical probe: how recoverable is the input byte, and the bytes before it, from each depth?

The premise of value reuse is that low-level information gets harder to reach with depth. This
tool measures it directly. For every depth :math:`\ell = 0..L` (0: the embedding output; :math:`\ell`:
what block :math:`\ell` hands on, i.e. the ``x`` of the :class:`~value_routing.BlockInput` that
``block_output`` returns, the stream the next block reads and, after the last block, the final
norm's input) and every offset :math:`k` (0: the current byte, 1–3: the bytes 1–3 positions back),
a linear probe predicts byte :math:`t-k` from the stream at position :math:`t`:

* **fit**: closed-form ridge regression onto one-hot targets,
  :math:`W = (X^\top X + \lambda n I)^{-1} X^\top Y` on features standardised with the fit
  split's mean and standard deviation (plus a bias column), :math:`\lambda` = ``ridge``;
* **score**: accuracy of :math:`\arg\max_c (x W)_c` on held-out positions.

The text is cut into ``windows`` evenly spaced windows (:func:`recipes.eval.domains.window_starts`);
the first half of the windows fits, the second half scores, so no position is in both. Positions
``t < k`` have no byte ``t - k`` and are left out for that offset. Everything is deterministic:
the same windows for every model.

``python -m recipes.eval.probe CHECKPOINT [--domain val|prose|c] [--windows 64] [--seq-len 128]``
prints accuracy by depth × offset for a checkpoint (a :mod:`recipes.train.checkpoint` directory or
a ``.safetensors`` file with its config); ``--json FILE`` writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from recipes.eval.domains import DOMAINS, domain_bytes, window_starts
from recipes.lm.cli import flags_of, non_negative_int, positive_int, user_errors, writable
from recipes.lm.model import CausalLM
from value_routing.strategies import Strategy
from value_routing.typing import Float, Int, Tensor

#: Offsets probed by default: the current byte and the three before it.
OFFSETS: tuple[int, ...] = (0, 1, 2, 3)


@contextlib.contextmanager
def recorded_streams(strategy: Strategy) -> Iterator[list[Tensor]]:
    """The ``x`` of every :class:`~value_routing.BlockInput` the strategy hands on (``init_state``'s,
    then each ``block_output``'s), recorded for the duration of the ``with``."""
    seen: list[Tensor] = []
    init_state, block_output = strategy.init_state, strategy.block_output

    def record_init(x0, tokens=None):
        inp, state = init_state(x0, tokens)
        seen.append(inp.x)
        return inp, state

    def record_output(layer, y, state):
        inp, state = block_output(layer, y, state)
        seen.append(inp.x)
        return inp, state

    strategy.init_state, strategy.block_output = record_init, record_output  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del strategy.init_state, strategy.block_output


@torch.no_grad()
def residual_streams(model: CausalLM, tokens: Int[Tensor, "batch seq"]) -> list[Float[Tensor, "batch seq dim"]]:
    """The stream at every depth ``0..L`` for ``tokens`` (see the module docstring)."""
    was_training = model.training
    model.eval()
    try:
        with recorded_streams(model.strategy) as seen:
            model(tokens)
    finally:
        model.train(was_training)
    if len(seen) != model.cfg.n_layers + 1:
        raise RuntimeError(f"recorded {len(seen)} streams for {model.cfg.n_layers} layers; expected n_layers + 1")
    return [x.detach().double() for x in seen]


def ridge_accuracy(
    fit_x: Float[Tensor, "n dim"], fit_y: Int[Tensor, " n"], test_x: Float[Tensor, "m dim"], test_y: Int[Tensor, " m"],
    ridge: float = 1e-3, classes: int = 256,
) -> float:
    """Held-out accuracy of a closed-form ridge probe onto one-hot ``classes`` (module docstring)."""
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    mean, std = fit_x.mean(0), fit_x.std(0).clamp_min(1e-12)

    def design(x: Tensor) -> Tensor:
        z = (x.double() - mean) / std
        return torch.cat((z, torch.ones(len(z), 1, dtype=z.dtype)), dim=1)

    a = design(fit_x)
    target = torch.nn.functional.one_hot(fit_y.long(), classes).double()
    gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype)
    weights = torch.linalg.solve(gram, a.T @ target)
    return (design(test_x) @ weights).argmax(1).eq(test_y.long()).double().mean().item()


def lexical_probe(
    model: CausalLM, data: Int[Tensor, " tokens"], seq_len: int = 128, windows: int = 64,
    offsets: tuple[int, ...] = OFFSETS, ridge: float = 1e-3,
) -> dict[str, Any]:
    """Accuracy ``[depth][offset]`` of the probe on ``data`` (a byte tensor); JSON-ready."""
    if windows < 2:
        raise ValueError(f"windows must be >= 2 (half fit, half score), got {windows}")
    if any(k < 0 or k >= seq_len for k in offsets):
        raise ValueError(f"offsets must be in [0, seq_len) = [0, {seq_len}), got {list(offsets)}")
    starts = window_starts(len(data), seq_len - 1, windows)
    tokens = torch.stack([data[s : s + seq_len] for s in starts]).long()
    streams = residual_streams(model, tokens)
    half = windows // 2
    accuracy = []
    for x in streams:
        row = []
        for k in offsets:
            feats, labels = x[:, k:], tokens[:, : seq_len - k]  # position t predicts byte t - k
            row.append(ridge_accuracy(feats[:half].flatten(0, 1), labels[:half].flatten(),
                                      feats[half:].flatten(0, 1), labels[half:].flatten(), ridge))
        accuracy.append(row)
    return {"offsets": list(offsets), "depths": list(range(len(streams))), "accuracy": accuracy,
            "windows": windows, "seq_len": seq_len, "ridge": ridge}


def format_probe(result: dict[str, Any]) -> str:
    """A markdown table: depth × offset accuracy."""
    head = "| depth | " + " | ".join(f"byte t−{k}" if k else "byte t" for k in result["offsets"]) + " |"
    rows = [head, "|---|" + "---:|" * len(result["offsets"])]
    for depth, row in zip(result["depths"], result["accuracy"]):
        rows.append(f"| {depth} | " + " | ".join(f"{a:.3f}" for a in row) + " |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory or .safetensors weights with their model config")
    p.add_argument("--domain", default="val", choices=DOMAINS, help="the held-out text probed")
    p.add_argument("--windows", type=positive_int, default=64, help="windows of --seq-len bytes (half fit, half score)")
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--offsets", type=non_negative_int, nargs="+", default=list(OFFSETS))
    p.add_argument("--json", type=writable("file"), help="also write the result to this file")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from recipes.data import embedded_corpus
    from recipes.train.checkpoint import load_model

    parser = build_parser()
    args = parser.parse_args(argv)
    flags = flags_of(parser)
    with user_errors(parser, flags, flag="checkpoint"):
        model = load_model(args.checkpoint)
    if args.seq_len > model.cfg.max_seq_len:
        parser.error(f"--seq-len must be <= the model's max_seq_len = {model.cfg.max_seq_len}, got {args.seq_len}")
    if args.windows < 2:
        parser.error(f"--windows must be >= 2 (half fit, half score), got {args.windows}")
    data = domain_bytes(embedded_corpus()[1])[args.domain]
    if isinstance(data, str):
        parser.error(f"--domain {args.domain} is not available here: {data}")
    if max(args.offsets) >= args.seq_len:
        parser.error(f"--offsets must be < --seq-len = {args.seq_len}, got {max(args.offsets)}")
    result = lexical_probe(model, data, args.seq_len, args.windows, tuple(args.offsets))
    print(format_probe(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
