"""Attention backends and the mask specification they share."""

from value_routing.attention.backends import (
    ATTENTION_BACKENDS,
    AttentionBackend,
    BackendFactory,
    AutoAttention,
    get_backend,
    sdpa_attention,
    xformers_attention,
    xformers_available,
    xformers_bias,
    xformers_unavailable_reason,
)
from value_routing.attention.mask import AttentionMask

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "BackendFactory",
    "AttentionMask",
    "AutoAttention",
    "get_backend",
    "sdpa_attention",
    "xformers_attention",
    "xformers_available",
    "xformers_bias",
    "xformers_unavailable_reason",
]
