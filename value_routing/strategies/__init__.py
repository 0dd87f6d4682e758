"""Reuse strategies, all implementing the :class:`Strategy` protocol."""

from __future__ import annotations

from typing import Any

from value_routing.strategies.base import BlockInput, ModelDims, Strategy
from value_routing.strategies.dense import DenseAggregation
from value_routing.strategies.depth_states import DEPTH_IMPLS
from value_routing.strategies.hyper_connections import HyperConnections
from value_routing.strategies.mudd import DynamicDenseAggregation
from value_routing.strategies.no_reuse import NoReuse
from value_routing.strategies.selective_gate import SelectiveGate
from value_routing.strategies.static_residual import StaticValueResidual

#: Strategy names accepted by configs and builders.
STRATEGIES: dict[str, type[Strategy]] = {
    "baseline": NoReuse,
    "static": StaticValueResidual,
    "satformer": SelectiveGate,
    "dense": DenseAggregation,
    "mudd": DynamicDenseAggregation,
    "hyper": HyperConnections,
}


def build_strategy(name: str, dims: ModelDims, **options: Any) -> Strategy:
    """Instantiate the strategy registered under ``name`` for a model of ``dims``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name].for_model(dims, **options)


__all__ = [
    "STRATEGIES",
    "BlockInput",
    "DEPTH_IMPLS",
    "DenseAggregation",
    "DynamicDenseAggregation",
    "HyperConnections",
    "ModelDims",
    "NoReuse",
    "SelectiveGate",
    "StaticValueResidual",
    "Strategy",
    "build_strategy",
]
