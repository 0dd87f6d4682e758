"""Reuse strategies, all implementing the :class:`Strategy` protocol, registered in :data:`STRATEGIES`."""

from __future__ import annotations

import inspect
from typing import Any

from value_routing.strategies.base import (
    STRATEGIES,
    BlockInput,
    ModelDims,
    Strategy,
    ValueResidual,
    strategy_options,
)
from value_routing.strategies.depth_states import DEPTH_IMPLS

# Each module registers its strategy; imported in the registry's (and every table's) row order: the
# value path first, then the routing over depth, then the embedding shortcut.
from value_routing.strategies.no_reuse import NoReuse  # isort: skip
from value_routing.strategies.static_residual import StaticValueResidual  # isort: skip
from value_routing.strategies.selective_gate import SelectiveGate  # isort: skip
from value_routing.strategies.lerp_value_residual import LerpValueResidual  # isort: skip
from value_routing.strategies.value_embeddings import ValueEmbeddings  # isort: skip
from value_routing.strategies.dense import DenseAggregation  # isort: skip
from value_routing.strategies.mudd import DynamicDenseAggregation  # isort: skip
from value_routing.strategies.hyper_connections import HyperConnections  # isort: skip
from value_routing.strategies.manifold_hyper_connections import ManifoldHyperConnections  # isort: skip
from value_routing.strategies.attention_residuals import AttentionResiduals  # isort: skip
from value_routing.strategies.embedding_shortcut import EmbeddingShortcut  # isort: skip


def build_strategy(name: str, dims: ModelDims, **options: Any) -> Strategy:
    """Instantiate the strategy registered under ``name`` for a model of ``dims``.

    An option its constructor does not take is a ValueError naming it and the options there are
    (:func:`strategy_options`), not Python's TypeError; a constructor with ``**kwargs`` is trusted.
    """
    cls = STRATEGIES.lookup(name)
    params = inspect.signature(cls.__init__).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        known = strategy_options(name)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                             f"for strategy {name!r}; its options: {', '.join(known) or 'none'}")
    return cls.for_model(dims, **options)


__all__ = [
    "STRATEGIES",
    "AttentionResiduals",
    "BlockInput",
    "DEPTH_IMPLS",
    "DenseAggregation",
    "DynamicDenseAggregation",
    "EmbeddingShortcut",
    "HyperConnections",
    "LerpValueResidual",
    "ManifoldHyperConnections",
    "ModelDims",
    "NoReuse",
    "SelectiveGate",
    "StaticValueResidual",
    "Strategy",
    "ValueEmbeddings",
    "ValueResidual",
    "build_strategy",
    "strategy_options",
]
