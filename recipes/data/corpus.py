"""The embedded default corpus and a byte-level tokenizer: no downloads, ever.

The corpus is the source of the running Python's standard library (pure-Python modules at
its top level, sorted by name), which every Python installation ships. Files are assigned to
train or validation by a stable hash of their name.
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import torch

from value_routing.typing import Int, Tensor


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The top-level ``.py`` files of the standard library, sorted by name."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files found under the standard library path {root}")
    return files


def embedded_corpus(
    max_bytes: int = 4_000_000, val_fraction: float = 0.05, root: Path | None = None
) -> tuple[Int[Tensor, " train_tokens"], Int[Tensor, " val_tokens"]]:
    """Byte tensors (uint8) of the train and validation splits of the stdlib corpus."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val, total = bytearray(), bytearray(), 0
    for path in stdlib_files(root):
        data = path.read_bytes()
        is_val = zlib.crc32(path.name.encode()) % 1000 < val_fraction * 1000
        (val if is_val else train).extend(data)
        total += len(data)
        if total >= max_bytes:
            break
    if not train or not val:
        raise ValueError("the corpus is too small to split into train and validation; raise max_bytes")
    return torch.frombuffer(train, dtype=torch.uint8), torch.frombuffer(val, dtype=torch.uint8)


def random_batch(
    data: Int[Tensor, " tokens"], batch: int, seq_len: int, generator: torch.Generator
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """Random windows of ``seq_len + 1`` tokens split into inputs and next-token targets."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"data has {len(data)} tokens; need more than seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
    windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]
