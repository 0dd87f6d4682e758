r"""DenseAggregation (DenseFormer): a depth-weighted average after blocks.

With :math:`X_0` the embedding and :math:`X_i = B_i(Y_{i-1})` the output of block
:math:`i = 1..L` (``layer = i - 1``), the input of the next block is

.. math::

    Y_i = \begin{cases}
        \sum_{j \le i,\; j \equiv i \ (\mathrm{mod}\ k)} \alpha_{i,j}\, X_j & \text{if } p \mid i \\
        X_i & \text{otherwise}
    \end{cases}

with dilation :math:`k` (each depth-weighted average, DWA, reads every :math:`k`-th state
counting back from :math:`i`) and period :math:`p` (a DWA only after every :math:`p`-th block;
``1x1`` is the plain DenseFormer). :math:`Y_L` feeds the final norm. The weights start as the
identity, :math:`\alpha_{i,i}=1` and 0 elsewhere, so at initialisation the model *is* the
baseline. They are stored as one 1-D vector per DWA (no weight decay under the recipes'
"matrices only" rule, matching the paper, which decays only the Transformer's weights).

The states :math:`X_j` live in one buffer written once per block (see
:mod:`value_routing.strategies.depth_states`); ``impl="stack"`` is the naive
``torch.stack``-per-layer variant, kept for benchmarks. Every operation is per token, so
incremental decoding needs the states of the new tokens only.
"""

from __future__ import annotations

import torch
from torch import nn

from value_routing.strategies.base import STRATEGIES, BlockInput, Strategy, check_layer
from value_routing.strategies.depth_states import (
    DepthStates,
    aggregate_depth_states,
    append_depth_state,
    check_impl,
    init_depth_states,
)
from value_routing.typing import Float, Tensor


@STRATEGIES.register("dense")
class DenseAggregation(Strategy):
    """DenseFormer depth-weighted averaging (see module docstring for the equation)."""

    def __init__(self, n_layers: int, dilation: int = 1, period: int = 1, impl: str = "buffer") -> None:
        super().__init__(n_layers)
        for name, value in (("dilation", dilation), ("period", period)):
            if not 1 <= value <= n_layers:
                raise ValueError(f"{name} must be in [1, n_layers] = [1, {n_layers}], got {value}")
        self.dilation, self.period, self.impl = dilation, period, check_impl(impl)
        self.alphas = nn.ParameterList(self._identity_weights(i) for i in self.dwa_depths())

    @classmethod
    def preserving_options(cls, options):
        return dict(options)  # the identity weights are the baseline exactly

    def dwa_depths(self) -> list[int]:
        """The depths :math:`i \\in 1..L` followed by a DWA (multiples of ``period``)."""
        return list(range(self.period, self.n_layers + 1, self.period))

    def sources(self, depth: int) -> range:
        """The state indices :math:`j` the DWA after block ``depth`` averages, in order."""
        return range(depth % self.dilation, depth + 1, self.dilation)

    def _identity_weights(self, depth: int) -> nn.Parameter:
        alpha = torch.zeros(len(self.sources(depth)))
        alpha[-1] = 1.0
        return nn.Parameter(alpha)

    def alpha(self, depth: int) -> Float[Tensor, " sources"] | None:
        """:math:`\\alpha_{i,\\cdot}` of the DWA after block ``depth`` over :meth:`sources`; ``None`` if none."""
        if depth % self.period:
            return None
        return self.alphas[depth // self.period - 1]

    def init_state(self, x0: Float[Tensor, "batch seq dim"], tokens=None) -> tuple[BlockInput, DepthStates]:
        return BlockInput(x0), init_depth_states(x0, self.n_layers + 1, self.impl)

    def block_output(self, layer: int, y: Float[Tensor, "batch seq dim"], state: DepthStates):
        check_layer(layer, self.n_layers)
        state = append_depth_state(state, y)
        depth = layer + 1
        alpha = self.alpha(depth)
        if alpha is None:
            return BlockInput(y), state
        start = depth % self.dilation
        x = aggregate_depth_states(state, alpha.view(1, 1, 1, -1), start=start, step=self.dilation)
        return BlockInput(x[0]), state

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, dilation={self.dilation}, period={self.period}, impl={self.impl!r}"
