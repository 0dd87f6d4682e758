"""Tokenizers for the recipes: UTF-8 bytes, or a user's local Hugging Face ``tokenizer.json``.

Nothing is ever downloaded: :class:`HFTokenizer` only reads a file you already have (the
``tokenizers`` library parses JSON; no pickle, no network). It needs the optional extra
``pip install 'value_routing[hf]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from recipes.data.corpus import ByteTokenizer


class Tokenizer(Protocol):
    """What the recipes need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` loaded from a local ``tokenizer.json``.

    ``eos_token`` names the document separator prepended when writing shards (the first of
    ``<|endoftext|>``, ``</s>``, ``<eos>`` found in the vocabulary when not given).
    """

    def __init__(self, path: str | os.PathLike, eos_token: str | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path} (only local files are loaded)")
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("HFTokenizer needs the 'tokenizers' package: pip install 'value_routing[hf]'") from err
        self.path = path
        self._tok = _HFTokenizer.from_file(str(path))
        candidates = (eos_token,) if eos_token is not None else ("<|endoftext|>", "</s>", "<eos>")
        ids = [self._tok.token_to_id(t) for t in candidates]
        if eos_token is not None and ids[0] is None:
            raise ValueError(f"eos_token {eos_token!r} is not in the vocabulary of {path}")
        self.eos_id: int | None = next((i for i in ids if i is not None), None)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """``"byte"`` → :class:`ByteTokenizer`; a path to a ``.json`` file → :class:`HFTokenizer`."""
    if str(spec) == "byte":
        return ByteTokenizer()
    if str(spec).endswith(".json"):
        return HFTokenizer(spec)
    raise ValueError(f"tokenizer must be 'byte' or a path to a local tokenizer.json, got {str(spec)!r}")


__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer", "load_tokenizer"]
