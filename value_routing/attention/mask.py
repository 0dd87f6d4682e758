"""Attention mask specification shared by every backend.

Two layouts are supported, matching xFormers' ``attn_bias`` semantics:

* causal, with ``q_offset`` cached keys before the first query (``LowerTriangularMask`` when
  ``q_offset == 0``, ``LowerTriangularFromBottomRightMask`` otherwise);
* packed documents (``BlockDiagonalCausalMask``): ``seq_lens`` documents concatenated along
  the sequence of a batch of one; a token attends causally within its own document only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from value_routing.typing import Bool, Tensor


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may attend to."""

    q_offset: int = 0
    seq_lens: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.q_offset < 0:
            raise ValueError(f"q_offset must be >= 0, got {self.q_offset}")
        if self.seq_lens is not None:
            if self.q_offset != 0:
                raise ValueError("seq_lens (packed documents) cannot be combined with q_offset > 0 (a KV cache)")
            if len(self.seq_lens) == 0 or any(n < 1 for n in self.seq_lens):
                raise ValueError(f"seq_lens must be a non-empty tuple of positive lengths, got {self.seq_lens}")

    def check(self, batch: int, q_len: int, kv_len: int) -> None:
        """Raise a ValueError if the mask does not fit the given shapes."""
        if self.seq_lens is not None:
            if batch != 1:
                raise ValueError(f"packed documents (seq_lens) need batch == 1, got batch={batch}")
            if sum(self.seq_lens) != q_len or kv_len != q_len:
                raise ValueError(f"sum(seq_lens)={sum(self.seq_lens)} must equal the sequence length {q_len}")
        elif kv_len != self.q_offset + q_len:
            raise ValueError(f"kv_len ({kv_len}) must equal q_offset ({self.q_offset}) + q_len ({q_len})")

    def dense(self, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Bool[Tensor, "q_len kv_len"]:
        """The mask as a boolean matrix (True = may attend)."""
        q_pos = torch.arange(q_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        allowed = k_pos <= q_pos + self.q_offset
        if self.seq_lens is not None:
            lens = torch.tensor(self.seq_lens, device=device)
            doc = torch.repeat_interleave(torch.arange(len(self.seq_lens), device=device), lens)
            allowed = allowed & (doc[:, None] == doc[None, :])
        return allowed

    def positions(self, q_len: int, device: torch.device | str = "cpu") -> Tensor:
        """Rotary positions of the queries: restart at 0 for every packed document."""
        if self.seq_lens is None:
            return torch.arange(self.q_offset, self.q_offset + q_len, device=device)
        starts = torch.tensor((0,) + self.seq_lens[:-1], device=device).cumsum(0)
        lens = torch.tensor(self.seq_lens, device=device)
        return torch.arange(q_len, device=device) - torch.repeat_interleave(starts, lens)
