r"""DynamicDenseAggregation (MUDDFormer): per-token dense connections for four input streams.

With :math:`X_0` the embedding and :math:`X_i` the output of block :math:`i = 1..L`
(``layer = i - 1``), the inputs of block :math:`i+1` are four streams
:math:`c \in \{Q, K, V, R\}`

.. math::

    X^c_i = \sum_{j=0}^{i} A^c_{i,j}\, X_j, \qquad
    A_i = \mathrm{GELU}\big(\mathrm{RMSNorm}(X_i)\, W^1_i\big)\, W^2_i + a_i

where RMSNorm has no scale, :math:`W^1_i \in \mathbb{R}^{d \times C(i+1)}`,
:math:`W^2_i \in \mathbb{R}^{C(i+1) \times C(i+1)}` and the static weights
:math:`a_i \in \mathbb{R}^{C \times (i+1)}`, so :math:`A_i` holds, per token, one weight per
stream and earlier state. Block :math:`i+1` computes attention from
:math:`\mathrm{norm}(X^Q_i), \mathrm{norm}(X^K_i), \mathrm{norm}(X^V_i)` and adds it to the
residual stream :math:`X^R_i`. After the last block only :math:`R` is needed (:math:`C=1`);
it feeds the final norm. Block 1 reads the embedding for all streams.

Initialisation: :math:`a_i` is 1 on the newest state :math:`X_i` for every stream and 0
elsewhere, :math:`W^2_i = 0` and :math:`W^1_i \sim \mathcal{N}(0, \text{init\_std}^2)`, so the
model starts as the baseline and the dynamic part grows from zero. :math:`a_i` is stored as
1-D vectors (no weight decay under the recipes' "matrices only" rule).

**Forms.** ``form="ours"`` is the above. ``form="authors"`` is the form of the MUDDFormer
authors' code as run by the SATFormer authors' public code (their configs switch it on for
every size): pre- and post-aggregation norms, with :math:`n(x) = x / \mathrm{rms}(x)`,

.. math::

    X^c_i = g^{\text{post}}_{i,c} \odot n\Big(\sum_{j=0}^{i} A^c_{i,j}\,
            g^{\text{pre}}_{i,j} \odot n(X_j)\Big) + X_i

with learned channel scales :math:`g^{\text{pre}}_{i,j}` (init 1, one per aggregation and
state) and :math:`g^{\text{post}}_{i,c}` (init 1e-3), static weights :math:`a_i = 0` (the
``+ X_i`` already makes it the baseline at init) and :math:`W^1_i \sim \mathcal{N}(0, 1/d^2)`
(std :math:`1/d`, not :math:`1/\sqrt d`). Blocks then give the query, key and value inputs
separate learned norms (``separate_qkv_norms``). The states are stored normalised,
:math:`n(X_j)`, so the pre-norm costs one RMS per state, not one per aggregation.

The states live in one write-once buffer (:mod:`value_routing.strategies.depth_states`);
``impl="stack"`` is the naive ``torch.stack``-per-layer variant, kept for benchmarks. All
operations are per token, so incremental decoding needs the new tokens' states only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from value_routing.strategies.base import STRATEGIES, BlockInput, ModelDims, Strategy, check_layer, rms_normalize
from value_routing.strategies.checks import check_number
from value_routing.strategies.depth_states import (
    DepthStates,
    aggregate_depth_states,
    append_depth_state,
    check_impl,
    init_depth_states,
)
from value_routing.typing import Float, Tensor

#: The streams every block but the last reads, in the order of :math:`A_i`'s stream axis.
MUDD_STREAMS: tuple[str, ...] = ("q", "k", "v", "r")
#: ``form`` values: our original form, or the pre/post-norm form of the authors' code.
MUDD_FORMS: tuple[str, ...] = ("ours", "authors")
#: Initial post-aggregation norm scale of the authors' form.
POST_NORM_INIT = 1e-3


@STRATEGIES.register("mudd")
class DynamicDenseAggregation(Strategy):
    """MUDDFormer multiway dynamic dense connections (see module docstring for the equation)."""

    separate_qkv_inputs = True  # the Q, K and V streams

    def __init__(
        self, d_model: int, n_layers: int, impl: str = "buffer", init_std: float = 0.02, norm_eps: float = 1e-6,
        form: str = "ours",
    ) -> None:
        super().__init__(n_layers)
        if form not in MUDD_FORMS:
            raise ValueError(f"form must be one of {MUDD_FORMS}, got {form!r}")
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        check_number("init_std", init_std, 0)
        check_number("norm_eps", norm_eps, 0)
        self.d_model, self.impl, self.norm_eps, self.form = d_model, check_impl(impl), norm_eps, form
        authors = form == "authors"
        self.separate_qkv_norms = authors
        self.w1, self.w2, self.static = nn.ModuleList(), nn.ModuleList(), nn.ParameterList()
        self.pre_norms, self.post_norms = nn.ParameterList(), nn.ParameterList()
        for layer in range(n_layers):
            streams, depth = self.n_streams(layer), layer + 2
            width = streams * depth
            self.w1.append(nn.Linear(d_model, width, bias=False))
            self.w2.append(nn.Linear(width, width, bias=False))
            nn.init.normal_(self.w1[-1].weight, std=1.0 / d_model if authors else init_std)
            nn.init.zeros_(self.w2[-1].weight)
            static = torch.zeros(streams, depth)
            if not authors:
                static[:, -1] = 1.0
            self.static.append(nn.Parameter(static.flatten()))
            if authors:
                # flattened to 1-D: norm scales, not decayed under the recipes' "matrices only" rule
                self.pre_norms.append(nn.Parameter(torch.ones(depth * d_model)))
                self.post_norms.append(nn.Parameter(torch.full((streams * d_model,), POST_NORM_INIT)))

    @classmethod
    def preserving_options(cls, options):
        if options.get("form") == "authors":
            raise ValueError(f"mudd form='authors' starts with its post-norm scale at {POST_NORM_INIT}, not as the "
                             "identity: use form 'ours', or pass preserve_function=False")
        return dict(options)  # W2 = 0 and the static weights on the newest state: the baseline exactly

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "DynamicDenseAggregation":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, **options)

    def n_streams(self, layer: int) -> int:
        """4 (Q, K, V, R) after every block but the last, 1 (R) after the last."""
        return 1 if layer == self.n_layers - 1 else len(MUDD_STREAMS)

    def weights(self, layer: int, x: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch seq streams depth"]:
        """:math:`A_i` after block ``layer`` from its output ``x``: ``(batch, seq, streams, layer + 2)``."""
        check_layer(layer, self.n_layers)
        streams, depth = self.n_streams(layer), layer + 2
        # RMSNorm(x) W1 = rstd(x) · (x W1): scaling after the projection saves only x (kept
        # anyway) for backward, not a normalised copy of it
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.norm_eps).to(x.dtype)
        dynamic = self.w2[layer](F.gelu(self.w1[layer](x) * rstd))
        static = self.static[layer].to(dynamic.dtype)
        return (dynamic + static).unflatten(-1, (streams, depth))

    def init_state(self, x0: Float[Tensor, "batch seq dim"], tokens=None) -> tuple[BlockInput, DepthStates]:
        first = rms_normalize(x0, self.norm_eps) if self.form == "authors" else x0
        return BlockInput(x0), init_depth_states(first, self.n_layers + 1, self.impl)

    def block_output(self, layer: int, y: Float[Tensor, "batch seq dim"], state: DepthStates):
        """The next block's four input streams (Q, K, V and the residual R); after the last block R alone."""
        if self.form == "authors":
            streams, state = self._aggregate_normed(layer, y, state)
        else:
            state = append_depth_state(state, y)
            streams = aggregate_depth_states(state, self.weights(layer, y))
        if streams.shape[0] == 1:
            return BlockInput(streams[0]), state
        q, k, v, r = streams.unbind(0)
        return BlockInput(r, q, k, v), state

    def _aggregate_normed(self, layer: int, y: Tensor, state: DepthStates) -> tuple[Tensor, DepthStates]:
        """The authors' form: pre-norm scales inside, post-norm and ``+ X_i`` outside the sum."""
        states = append_depth_state(state, rms_normalize(y, self.norm_eps))
        pre = self.pre_norms[layer].view(layer + 2, self.d_model)
        summed = aggregate_depth_states(states, self.weights(layer, y), scales=pre)
        post = self.post_norms[layer].view(-1, 1, 1, self.d_model).to(summed.dtype)
        return post * rms_normalize(summed, self.norm_eps) + y, states

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_layers={self.n_layers}, impl={self.impl!r}, form={self.form!r}"
