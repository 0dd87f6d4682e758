"""Straightforward reference formulas the tests compare against."""

import math

import torch


def naive_attention(q, k, v, allowed):
    """softmax(q kᵀ / sqrt(d) masked) v with kv-heads repeated for GQA; layout (b, t, h, d)."""
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def gate_values(logits, act):
    """act(logits) written out from the SATFormer paper's definitions."""
    heads = logits.shape[-1]
    if act == "relu":
        return torch.clamp(logits, min=0)
    if act == "sigmoid":
        return 1 / (1 + torch.exp(-logits))
    if act == "tanh":
        return (torch.exp(logits) - torch.exp(-logits)) / (torch.exp(logits) + torch.exp(-logits))
    if act == "identity":
        return logits
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    soft = e / e.sum(-1, keepdim=True)
    if act == "softmax":
        return soft * heads
    return soft * (1 / (1 + torch.exp(-logits))) * heads
