"""Attention mask specification shared by every backend.

Three layouts are supported, matching xFormers' ``attn_bias`` semantics:

* causal, with ``q_offset`` cached keys before the first query (``LowerTriangularMask`` when
  ``q_offset == 0``, ``LowerTriangularFromBottomRightMask`` otherwise);
* packed documents (``BlockDiagonalCausalMask``): ``seq_lens`` documents concatenated along
  the sequence of a batch of one; a token attends causally within its own document only;
* causal with key padding: ``key_keep (batch, kv_len)`` marks the real keys (left or right
  padding, or both). A query attends to the real keys at or before it, and always to itself:
  a padding query before the first real token would otherwise have no key at all, and an
  all-masked softmax row is NaN (its output is garbage either way and is ignored; no real
  query ever sees a padding key). xFormers receives this as a dense additive bias tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from value_routing.typing import Bool, Tensor


@dataclass(frozen=True, eq=False)  # eq=False: key_keep is a tensor, compare masks by identity
class AttentionMask:
    """Which keys each query may attend to."""

    q_offset: int = 0
    seq_lens: tuple[int, ...] | None = None
    key_keep: Bool[Tensor, "batch kv_len"] | None = None

    def __post_init__(self) -> None:
        if self.q_offset < 0:
            raise ValueError(f"q_offset must be >= 0, got {self.q_offset}")
        if self.seq_lens is not None:
            if self.q_offset != 0:
                raise ValueError("seq_lens (packed documents) cannot be combined with q_offset > 0 (a KV cache)")
            if len(self.seq_lens) == 0 or any(n < 1 for n in self.seq_lens):
                raise ValueError(f"seq_lens must be a non-empty tuple of positive lengths, got {self.seq_lens}")
            if self.key_keep is not None:
                raise ValueError("seq_lens (packed documents) cannot be combined with key_keep (padding)")
        if self.key_keep is not None and (self.key_keep.dtype != torch.bool or self.key_keep.ndim != 2):
            raise ValueError(f"key_keep must be a bool (batch, kv_len) tensor, got {self.key_keep.dtype} "
                             f"of shape {tuple(self.key_keep.shape)}")

    def check(self, batch: int, q_len: int, kv_len: int) -> None:
        """Raise a ValueError if the mask does not fit the given shapes."""
        if self.seq_lens is not None:
            if batch != 1:
                raise ValueError(f"packed documents (seq_lens) need batch == 1, got batch={batch}")
            if sum(self.seq_lens) != q_len or kv_len != q_len:
                raise ValueError(f"sum(seq_lens)={sum(self.seq_lens)} must equal the sequence length {q_len}")
        elif kv_len != self.q_offset + q_len:
            raise ValueError(f"kv_len ({kv_len}) must equal q_offset ({self.q_offset}) + q_len ({q_len})")
        if self.key_keep is not None and tuple(self.key_keep.shape) != (batch, kv_len):
            raise ValueError(f"key_keep must have shape (batch, kv_len) = {(batch, kv_len)}, "
                             f"got {tuple(self.key_keep.shape)}")

    def dense(self, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Bool[Tensor, "*batch q_len kv_len"]:
        """The mask as a boolean matrix (True = may attend); ``(batch, 1, q_len, kv_len)`` with ``key_keep``."""
        q_pos = torch.arange(q_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        allowed = k_pos <= q_pos + self.q_offset
        if self.seq_lens is not None:
            lens = torch.tensor(self.seq_lens, device=device)
            doc = torch.repeat_interleave(torch.arange(len(self.seq_lens), device=device), lens)
            allowed = allowed & (doc[:, None] == doc[None, :])
        if self.key_keep is not None:
            allowed = (allowed & self.key_keep[:, None, None, :]) | (k_pos == q_pos + self.q_offset)
        return allowed

    def positions(self, q_len: int, device: torch.device | str = "cpu") -> Tensor:
        """Rotary positions of the queries: restart at 0 for every packed document.

        With ``key_keep`` a query's position is the number of real keys before it, ``(batch, q_len)``
        (padding queries get the position of the last real token before them, or 0).
        """
        if self.key_keep is not None:
            return (self.key_keep.cumsum(1)[:, self.q_offset :] - 1).clamp_min(0)
        if self.seq_lens is None:
            return torch.arange(self.q_offset, self.q_offset + q_len, device=device)
        starts = torch.tensor((0,) + self.seq_lens[:-1], device=device).cumsum(0)
        lens = torch.tensor(self.seq_lens, device=device)
        return torch.arange(q_len, device=device) - torch.repeat_interleave(starts, lens)
