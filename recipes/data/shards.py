"""Pre-tokenized ``.bin`` shards and a deterministic, resumable window sampler.

File format (the llm.c / nanoGPT FineWeb-Edu one): a header of 256 little-endian int32 —
``header[0] = 20240520`` (magic), ``header[1] = 1`` (version), ``header[2]`` = token count —
then the tokens as little-endian uint16. The llama-3 variant (magic ``20240801``, version
``7``, uint32 tokens) is read too, and so are headerless raw uint16 files.

:class:`TokenWindows` cuts every shard into windows of ``seq_len + 1`` tokens (stride
``seq_len``) and enumerates them in an order fixed by ``(seed, epoch)``: the shard order is
permuted per epoch, then the windows inside each shard. Sample ``k`` of the infinite stream
is a pure function of ``k``, so a data position is one integer and resuming is exact.

``python -m recipes.data.shards --tokenizer byte|tokenizer.json --out DIR files...`` tokenizes
text files into shards.
"""

from __future__ import annotations

import argparse
import bisect
import codecs
import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from recipes.lm.cli import int_at_least, user_errors, writable
from value_routing.typing import Int, Tensor

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
#: ``magic -> (version, token dtype)`` of the headers we read.
FORMATS = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}
GPT2_MAGIC = 20240520
SHARD_FORMATS = ("auto", "llmc", "raw")


def write_shard(path: str | os.PathLike, tokens: Sequence[int] | np.ndarray, fmt: str = "llmc") -> Path:
    """Write uint16 ``tokens`` to ``path`` (``fmt`` ``llmc``: with the 256-int32 header; ``raw``: none).

    The file appears atomically (written beside it, then renamed).
    """
    if fmt not in ("llmc", "raw"):
        raise ValueError(f"fmt must be one of ('llmc', 'raw'), got {fmt!r}")
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"tokens must be in [0, 65535] for uint16 shards, got [{arr.min()}, {arr.max()}]")
    if arr.size >= 2**31:
        raise ValueError(f"a shard holds < 2**31 tokens, got {arr.size}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        if fmt == "llmc":
            header = np.zeros(HEADER_INTS, dtype="<i4")
            header[:3] = (GPT2_MAGIC, FORMATS[GPT2_MAGIC][0], arr.size)
            f.write(header.tobytes())
        f.write(arr.astype("<u2").tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_shard(path: str | os.PathLike, fmt: str = "auto") -> np.ndarray:
    """The tokens of one shard as a read-only memory map (no copy).

    ``fmt="auto"`` reads an llm.c header when the file starts with a known magic number and
    falls back to headerless uint16 otherwise; ``llmc`` requires the header, ``raw`` ignores it.
    """
    if fmt not in SHARD_FORMATS:
        raise ValueError(f"fmt must be one of {SHARD_FORMATS}, got {fmt!r}")
    path = Path(path)
    size = path.stat().st_size
    header = np.fromfile(path, dtype="<i4", count=3) if size >= HEADER_BYTES else np.zeros(3, "<i4")
    magic, version, count = (int(v) for v in header)
    if fmt == "raw" or (fmt == "auto" and magic not in FORMATS):
        if size % 2:
            raise ValueError(f"{path}: a raw uint16 shard has an even byte count, got {size}")
        return np.memmap(path, dtype="<u2", mode="r") if size else np.zeros(0, "<u2")
    if magic not in FORMATS:
        raise ValueError(f"{path}: magic must be one of {tuple(FORMATS)} for fmt='llmc', got {magic}")
    want_version, dtype = FORMATS[magic]
    if version != want_version:
        raise ValueError(f"{path}: version must be {want_version} for magic {magic}, got {version}")
    if size != HEADER_BYTES + count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says {count} tokens ({HEADER_BYTES + count * dtype.itemsize} bytes), "
            f"file has {size} bytes (truncated or not a shard)"
        )
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_paths(pattern: str | os.PathLike) -> list[Path]:
    """Sorted ``.bin`` files matching a glob, or inside a directory."""
    pattern = str(pattern)
    paths = sorted(Path(pattern).glob("*.bin")) if os.path.isdir(pattern) else sorted(map(Path, glob.glob(pattern)))
    if not paths:
        raise FileNotFoundError(f"no .bin shards match {pattern!r}")
    return paths


class TokenWindows:
    """Training windows over token arrays in a seeded, position-addressable order."""

    def __init__(
        self, arrays: Sequence[np.ndarray | Tensor], seq_len: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.arrays = [a.numpy() if isinstance(a, torch.Tensor) else a for a in arrays]
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        self.counts = [max(0, (len(a) - 1) // seq_len) for a in self.arrays]
        self.total = sum(self.counts)
        if self.total == 0:
            raise ValueError(f"no window of seq_len + 1 = {seq_len + 1} tokens fits in the data")
        self._epoch_cache: tuple[int, np.ndarray, list[int]] | None = None
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_shards(
        cls, pattern: str, seq_len: int, seed: int = 0, shuffle: bool = True, fmt: str = "auto"
    ) -> "TokenWindows":
        return cls([read_shard(p, fmt) for p in shard_paths(pattern)], seq_len, seed, shuffle)

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.total

    def _epoch(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            n = len(self.arrays)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            ends = np.cumsum([self.counts[i] for i in order]).tolist()
            self._epoch_cache = (epoch, order, ends)
            self._perm_cache.clear()
        return self._epoch_cache[1], self._epoch_cache[2]

    def _window_start(self, shard: int, epoch: int, local: int) -> int:
        if self.shuffle:
            key = (epoch, shard)
            if key not in self._perm_cache:
                rng = np.random.default_rng([self.seed, epoch, shard + 1])
                self._perm_cache[key] = rng.permutation(self.counts[shard])
            local = int(self._perm_cache[key][local])
        return local * self.seq_len

    def window(self, index: int) -> np.ndarray:
        """Sample ``index`` of the infinite stream: ``seq_len + 1`` tokens."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        epoch, k = divmod(index, self.total)
        order, ends = self._epoch(epoch)
        pos = bisect.bisect_right(ends, k)
        shard = int(order[pos])
        local = k - (ends[pos - 1] if pos else 0)
        start = self._window_start(shard, epoch, local)
        return np.asarray(self.arrays[shard][start : start + self.seq_len + 1], dtype=np.int64)

    def batch(self, start: int, rows: int) -> tuple[Int[Tensor, "rows seq"], Int[Tensor, "rows seq"]]:
        """Samples ``start .. start + rows - 1`` as inputs and next-token targets."""
        windows = torch.from_numpy(np.stack([self.window(start + i) for i in range(rows)]))
        return windows[:, :-1], windows[:, 1:]


def write_shards(docs: Iterable[Sequence[int]], out_dir: str | os.PathLike, shard_tokens: int = 100_000_000,
                 prefix: str = "train", fmt: str = "llmc") -> list[Path]:
    """Concatenate token documents into ``{prefix}_{i:06d}.bin`` files of ``shard_tokens`` tokens."""
    if shard_tokens < 2:
        raise ValueError(f"shard_tokens must be >= 2, got {shard_tokens}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    buf = np.empty(shard_tokens, dtype=np.int64)
    fill = 0
    for doc in docs:
        doc = np.asarray(doc, dtype=np.int64)
        while doc.size:
            take = min(doc.size, shard_tokens - fill)
            buf[fill : fill + take], fill, doc = doc[:take], fill + take, doc[take:]
            if fill == shard_tokens:
                paths.append(write_shard(out / f"{prefix}_{len(paths):06d}.bin", buf, fmt))
                fill = 0
    if fill:
        paths.append(write_shard(out / f"{prefix}_{len(paths):06d}.bin", buf[:fill], fmt))
    return paths


def _is_utf8(path: Path, chunk: int = 1 << 20) -> bool:
    """Whether ``path`` decodes as UTF-8, read in chunks (a shard's source may be large)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Tokenize text files into uint16 .bin shards (one document per file).")
    p.add_argument("files", nargs="+", help="UTF-8 text files")
    p.add_argument("--out", type=writable("directory"), required=True, help="output directory")
    p.add_argument("--tokenizer", default="byte", help="'byte' or a local HF tokenizer.json")
    p.add_argument("--shard-tokens", type=int_at_least(2), default=100_000_000)
    p.add_argument("--prefix", default="train")
    p.add_argument("--format", choices=("llmc", "raw"), default="llmc")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    from recipes.data.tokenizers import load_tokenizer

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        parser.error(f"argument files: not found: {', '.join(map(repr, missing))}")
    undecodable = [f for f in args.files if not _is_utf8(Path(f))]
    if undecodable:  # checked before any shard is written, so a bad file leaves no partial output
        parser.error(f"argument files: not UTF-8 text: {', '.join(map(repr, undecodable))}")
    with user_errors(parser, flag="--tokenizer"):  # not 'byte' nor a file
        tok = load_tokenizer(args.tokenizer)
    if tok.vocab_size > 2**16:
        parser.error(f"--tokenizer: uint16 shards need vocab_size <= 65536, the tokenizer has {tok.vocab_size}")
    eos = getattr(tok, "eos_id", None)
    docs = (([eos] if eos is not None else []) + tok.encode(Path(f).read_text(encoding="utf-8")) for f in args.files)
    try:
        paths = write_shards(docs, args.out, args.shard_tokens, args.prefix, args.format)
    except OSError as err:  # what parse time cannot see: a full disk, a path taken meanwhile
        parser.error(f"--out: cannot write shards to {args.out!r}: {err.strerror or err}")
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return paths


if __name__ == "__main__":
    main()
