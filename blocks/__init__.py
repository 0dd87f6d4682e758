"""Transformer blocks that take a value-routing strategy."""

from blocks.attention import AttentionOutput, CausalSelfAttention, LayerCache
from blocks.block import BlockOutput, TransformerBlock
from blocks.layers import RMSNorm, SwiGLU, apply_rope, rope_tables

__all__ = [
    "AttentionOutput",
    "BlockOutput",
    "CausalSelfAttention",
    "LayerCache",
    "RMSNorm",
    "SwiGLU",
    "TransformerBlock",
    "apply_rope",
    "rope_tables",
]
