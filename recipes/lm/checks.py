"""Checks that raise a ValueError naming the argument (or field), the allowed values and the value given.

Two kinds: field checks of the recipes' frozen config dataclasses (:func:`check_min`,
:func:`check_choice`), and eager checks of what callers pass to :class:`recipes.lm.model.CausalLM`:
token ids, padding masks and targets. The tensor checks read the tensors' contents (one host
sync), so the model runs them only outside ``torch.compile`` (:func:`torch.compiler.is_compiling`):
a compiled graph neither breaks nor syncs for them.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from value_routing.typing import Tensor


def check_min(config: Any, minimum: int, *names: str) -> None:
    """Every field in ``names`` of ``config`` is ``>= minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_choice(config: Any, name: str, allowed: Iterable[Any]) -> None:
    """Field ``name`` of ``config`` is one of ``allowed``."""
    allowed, value = tuple(allowed), getattr(config, name)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_tokens(tokens: object, vocab_size: int) -> None:
    """``tokens`` is a 2-D integer tensor of ids in ``[0, vocab_size)``."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a torch.Tensor of integer token ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must have an integer dtype (token ids in [0, vocab_size={vocab_size})), "
                         f"got {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be a 2-D (batch, seq) tensor, got shape {tuple(tokens.shape)}")
    bad = (tokens < 0) | (tokens >= vocab_size)
    if tokens.numel() and bool(bad.any()):
        raise ValueError(f"tokens must be ids in [0, vocab_size) = [0, {vocab_size}), "
                         f"got {int(tokens[bad][0])} at index {tuple(bad.nonzero()[0].tolist())}")


def check_attention_mask(mask: object, tokens: Tensor, past_keep: Tensor | None = None) -> None:
    """``mask`` is 0/1 with the shape of ``tokens``; every row keeps at least one real token.

    ``past_keep`` is the cached rows' mask of earlier tokens (a row may continue a cached prompt
    with padding only).
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of 0/1 (1 = real token), got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(f"attention_mask must have the shape of tokens (batch, seq) = {tuple(tokens.shape)}, "
                         f"got {tuple(mask.shape)}")
    if mask.dtype.is_complex:
        raise ValueError(f"attention_mask must be bool, integer or float 0/1, got {mask.dtype}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        odd = mask[(mask != 0) & (mask != 1)][0].item()
        raise ValueError(f"attention_mask must hold only 0 and 1 (1 = real token, 0 = padding), got {odd}")
    real = mask.bool().any(1)
    if past_keep is not None:
        real = real | past_keep.any(1)
    if not bool(real.all()):
        rows = (~real).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} hold only padding (zeros); every row needs a real token")


def check_targets(targets: object, tokens: Tensor, vocab_size: int, ignore_index: int = -100) -> None:
    """``targets`` are integer ids in ``[0, vocab_size)`` or ``ignore_index``, shaped like ``tokens``."""
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.dtype.is_complex:
        raise ValueError(f"targets must be an integer tensor of token ids, got {getattr(targets, 'dtype', type(targets))}")
    if tuple(targets.shape) != tuple(tokens.shape):
        raise ValueError(f"targets must have the shape of tokens {tuple(tokens.shape)}, got {tuple(targets.shape)}")
    bad = ((targets < 0) | (targets >= vocab_size)) & (targets != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"targets must be ids in [0, vocab_size) = [0, {vocab_size}) or {ignore_index} (ignored), "
                         f"got {int(targets[bad][0])}")
