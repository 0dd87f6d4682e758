"""The language-model losses every loop trains with: plain (from the full logits) or chunked (the
LM head fused into the loss, the logits never exist)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy from the full ``(batch, seq, vocab)`` logits."""
    logits = model(x).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def chunked_lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`lm_loss` with the LM head fused into the loss, in token chunks: the logits never exist.

    Goes through the model's ``forward`` (``targets=``), so DDP / FSDP wrappers see the call.
    """
    return model(x, targets=y)
