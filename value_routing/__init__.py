"""value_routing: early-representation reuse for decoder-only Transformers."""

from value_routing.attention import AttentionMask, get_backend
from value_routing.attention import ATTENTION_BACKENDS
from value_routing.kernels import GATE_ACTIVATIONS, depth_aggregate, gate_mix
from value_routing.integrations import apply_value_routing, load_value_routed  # imports no transformers
from value_routing.registry import Registry
from value_routing.strategies import (
    DEPTH_IMPLS,
    STRATEGIES,
    AttentionResiduals,
    BlockInput,
    DenseAggregation,
    DynamicDenseAggregation,
    EmbeddingShortcut,
    HyperConnections,
    LerpValueResidual,
    ManifoldHyperConnections,
    ModelDims,
    NoReuse,
    SelectiveGate,
    StaticValueResidual,
    Strategy,
    ValueEmbeddings,
    ValueResidual,
    build_strategy,
    strategy_options,
)

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_BACKENDS",
    "DEPTH_IMPLS",
    "GATE_ACTIVATIONS",
    "STRATEGIES",
    "AttentionMask",
    "AttentionResiduals",
    "BlockInput",
    "DenseAggregation",
    "DynamicDenseAggregation",
    "EmbeddingShortcut",
    "HyperConnections",
    "LerpValueResidual",
    "ManifoldHyperConnections",
    "ModelDims",
    "NoReuse",
    "Registry",
    "SelectiveGate",
    "StaticValueResidual",
    "Strategy",
    "ValueEmbeddings",
    "ValueResidual",
    "apply_value_routing",
    "build_strategy",
    "depth_aggregate",
    "gate_mix",
    "get_backend",
    "load_value_routed",
    "strategy_options",
]
