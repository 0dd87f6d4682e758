"""Greedy / sampled generation with the KV cache."""

from __future__ import annotations

import math

import torch

from recipes.lm.checks import check_attention_mask, check_tokens
from recipes.lm.model import CausalLM, KVCache
from value_routing.typing import Int, Tensor


@torch.no_grad()
def generate(
    model: CausalLM,
    prompt: Int[Tensor, "batch prompt_len"],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
) -> Int[Tensor, "batch total_len"]:
    """Extend ``prompt`` by ``max_new_tokens`` tokens (greedy when ``temperature == 0``).

    ``attention_mask (batch, prompt_len)`` (1 = real token, 0 = padding) batches prompts of
    different lengths, padded on the left or the right: every row continues exactly as it would
    alone, the new tokens appended after column ``prompt_len``.
    """
    check_tokens(prompt, model.cfg.vocab_size)
    if attention_mask is not None:
        check_attention_mask(attention_mask, prompt)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    batch, prompt_len = prompt.shape
    if prompt_len == 0:
        raise ValueError("prompt must hold at least one token per row (the first prediction needs a context), "
                         "got shape (batch, 0)")
    total = prompt_len + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(f"max_new_tokens: the prompt's {prompt_len} tokens + max_new_tokens={max_new_tokens} "
                         f"exceed the model's max_seq_len ({model.cfg.max_seq_len})")
    dtype = next(model.parameters()).dtype
    cache = KVCache.allocate(model.cfg, batch, total, prompt.device, dtype)
    tokens = prompt
    logits, cache = model(prompt, cache=cache, attention_mask=attention_mask, validate=False)
    last = logits[:, -1] if attention_mask is None else logits[torch.arange(batch), last_real(attention_mask)]
    for _ in range(max_new_tokens):
        nxt = sample(last, temperature, top_k, generator)
        tokens = torch.cat((tokens, nxt[:, None]), dim=1)
        if tokens.shape[1] == total:
            break
        logits, cache = model(nxt[:, None], cache=cache, validate=False)  # sampled ids are in range
        last = logits[:, -1]
    return tokens


def last_real(attention_mask: Tensor) -> Int[Tensor, " batch"]:
    """Column of each row's last real token (right padding puts it before the end)."""
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask != 0, columns, -1).argmax(1)


def sample(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> Tensor:
    """Pick the next token from last-position logits."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
