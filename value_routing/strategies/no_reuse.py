"""NoReuse: the baseline Transformer, ``V'_n = V_n`` and ``x_{n+1} = x_n + block(x_n)``."""

from __future__ import annotations

from value_routing.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("baseline")
class NoReuse(Strategy):
    """Baseline: every hook is the identity, so the model is a plain pre-norm Transformer."""

    @classmethod
    def preserving_options(cls, options):
        return dict(options)
