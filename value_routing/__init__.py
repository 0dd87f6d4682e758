"""value_routing: early-representation reuse for decoder-only Transformers."""

from value_routing.attention import AttentionMask, get_backend
from value_routing.kernels import GATE_ACTIVATIONS, depth_aggregate, gate_mix
from value_routing.strategies import (
    DEPTH_IMPLS,
    STRATEGIES,
    BlockInput,
    DenseAggregation,
    DynamicDenseAggregation,
    HyperConnections,
    ModelDims,
    NoReuse,
    SelectiveGate,
    StaticValueResidual,
    Strategy,
    build_strategy,
)

__version__ = "0.1.0"

__all__ = [
    "DEPTH_IMPLS",
    "GATE_ACTIVATIONS",
    "STRATEGIES",
    "AttentionMask",
    "BlockInput",
    "DenseAggregation",
    "DynamicDenseAggregation",
    "HyperConnections",
    "ModelDims",
    "NoReuse",
    "SelectiveGate",
    "StaticValueResidual",
    "Strategy",
    "build_strategy",
    "depth_aggregate",
    "gate_mix",
    "get_backend",
]
