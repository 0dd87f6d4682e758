"""Held-out domains: bits per byte of a byte-level LM on text unlike its training corpus.

The study's models train on the top-level ``.py`` files of the standard library
(:func:`recipes.data.embedded_corpus`). Every Python install also ships two other kinds of text,
used here as held-out domains, with nothing downloaded:

``val``
    the in-domain validation split (stdlib modules the corpus assigns to validation);
``prose``
    English prose: the reference-manual topics that ``pydoc`` shows (the ``topics`` dict of the
    standard library's ``pydoc_data.topics``, ≈ 465 KB of plain text, joined in key order). That
    module lives in the ``pydoc_data`` package, not at the library's top level, so it is never in
    the training corpus (:func:`stdlib_files` lists top-level files only; tested);
``c``
    C source: the interpreter's header files (``sysconfig.get_paths()["include"]``, all ``*.h``
    sorted by path, ≈ 0.9 MB for CPython 3.11), skipped with the reason where there are none.

:func:`bits_per_byte` scores the same windows for every model: ``windows`` windows of ``seq_len + 1``
bytes at evenly spaced offsets over the whole text, each scored on all ``seq_len`` next-byte
predictions. With byte tokens one token is one byte, so bits/byte = mean cross-entropy / ln 2.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path
from typing import Any

import torch

from recipes.lm.model import CausalLM
from value_routing.typing import Int, Tensor

#: The held-out domains, in report order.
DOMAINS: tuple[str, ...] = ("val", "prose", "c")


def prose_text() -> bytes:
    """The ``pydoc`` topics of the running Python as UTF-8 text (topics joined in key order)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def c_headers(include: Path | None = None) -> bytes | None:
    """The interpreter's C headers concatenated in path order, or ``None`` if it ships none."""
    root = Path(include or sysconfig.get_paths()["include"])
    files = sorted(root.rglob("*.h")) if root.is_dir() else []
    return b"".join(path.read_bytes() for path in files) or None


def domain_bytes(val: Int[Tensor, " tokens"]) -> dict[str, Int[Tensor, " tokens"] | str]:
    """Each domain's bytes as a uint8 tensor, or the reason it is skipped (a string)."""
    out: dict[str, Int[Tensor, " tokens"] | str] = {"val": val}
    out["prose"] = torch.frombuffer(bytearray(prose_text()), dtype=torch.uint8)
    headers = c_headers()
    out["c"] = (torch.frombuffer(bytearray(headers), dtype=torch.uint8) if headers
                else f"no C headers under {sysconfig.get_paths()['include']}")
    return out


def window_starts(n_bytes: int, seq_len: int, windows: int) -> list[int]:
    """``windows`` evenly spaced offsets of ``seq_len + 1``-byte windows inside ``n_bytes`` bytes."""
    last = n_bytes - seq_len - 1
    if last < 0:
        raise ValueError(f"text has {n_bytes} bytes; need at least seq_len + 1 = {seq_len + 1}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if windows == 1:
        return [0]
    return [round(i * last / (windows - 1)) for i in range(windows)]


@torch.no_grad()
def bits_per_byte(
    model: CausalLM, data: Int[Tensor, " tokens"], seq_len: int, windows: int = 64, batch_size: int = 16
) -> float:
    """Mean next-byte cross-entropy in bits over the windows of :func:`window_starts`."""
    starts = window_starts(len(data), seq_len, windows)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(starts), batch_size):
            chunk = torch.stack([data[s : s + seq_len + 1] for s in starts[i : i + batch_size]]).long()
            loss = model(chunk[:, :-1], targets=chunk[:, 1:])
            total, count = total + loss.item() * chunk.shape[0], count + chunk.shape[0]
    finally:
        model.train(was_training)
    return total / count / math.log(2)


def evaluate_domains(
    model: CausalLM, val: Int[Tensor, " tokens"], seq_len: int, windows: int = 64
) -> dict[str, Any]:
    """``{domain: bits/byte}``, with ``skipped: {domain: reason}`` for domains this Python lacks."""
    result: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, data in domain_bytes(val).items():
        if isinstance(data, str):
            skipped[name] = data
        else:
            result[name] = bits_per_byte(model, data, seq_len, windows)
    return {**result, "skipped": skipped}
