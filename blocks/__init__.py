"""Transformer blocks that take a value-routing strategy, and the registry they are built from."""

from blocks.attention import AttentionContext, CausalSelfAttention, LayerCache
from blocks.block import BLOCKS, BlockSpec, TransformerBlock
from blocks.layers import RMSNorm, SwiGLU, apply_rope, rope_tables

__all__ = [
    "BLOCKS",
    "AttentionContext",
    "BlockSpec",
    "CausalSelfAttention",
    "LayerCache",
    "RMSNorm",
    "SwiGLU",
    "TransformerBlock",
    "apply_rope",
    "rope_tables",
]
