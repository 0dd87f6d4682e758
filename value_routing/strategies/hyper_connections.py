r"""HyperConnections: ``n`` residual streams mixed by learned (optionally dynamic) weights.

The residual stream widens to a hyper hidden matrix :math:`H \in \mathbb{R}^{n \times d}`
(per token), :math:`H^0 = (x_0, \dots, x_0)`. Block :math:`k` (``layer``) with the
connection weights :math:`A_m \in \mathbb{R}^{n}`, :math:`A_r \in \mathbb{R}^{n \times n}`,
:math:`B \in \mathbb{R}^{n}` computes

.. math::

    h = A_m^\top H^{k}, \qquad
    H^{k+1} = B^\top\, \mathcal{T}(h) + A_r^\top H^{k}, \qquad
    \mathcal{T}(h) = \mathrm{block}(h) - h

(our blocks add their own residual, so :math:`\mathcal{T}` is the block minus its input:
hyper-connections around whole blocks rather than around each sublayer). The output is
:math:`\sum_i H^L_i`, fed to the final norm.

Static (``dynamic=False``): :math:`A_m, A_r, B` are parameters. Dynamic (default), per token
and stream row :math:`i`, with :math:`\bar H = \mathrm{RMSNorm}(H)` (no scale):

.. math::

    [A_m, A_r]_{i,\cdot} = s_\alpha \tanh(\bar H_i W_\alpha) + [A_m, A_r]^{\text{static}}_{i,\cdot},
    \qquad
    B_i = s_\beta \tanh(\bar H_i W_\beta) + B^{\text{static}}_i

with :math:`W_\alpha \in \mathbb{R}^{d \times (n+1)}, W_\beta \in \mathbb{R}^{d}` initialised
to 0 and :math:`s_\alpha = s_\beta = 0.01`. Initialisation makes it a Pre-Norm residual:
:math:`A_m = e_{k \bmod n}`, :math:`A_r = I_n`, :math:`B = \mathbf{1}`; every stream then
equals the baseline's residual, and the summed output is :math:`n` times it (equal logits up
to the final RMSNorm's epsilon). The static weights and scales are 1-D parameters (no weight
decay under the recipes' rule), the dynamic projections matrices (decayed), as in the paper.

The mixing math (norm, weights and the aggregation over streams) runs in float32 (or the
input's dtype if wider), and :math:`H` is kept in that dtype. All operations are per token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from value_routing.kernels.depth_aggregate import depth_aggregate
from value_routing.strategies.base import BlockInput, ModelDims, Strategy, check_layer
from value_routing.typing import Float, Tensor


class HyperState(NamedTuple):
    """What the next block needs: its input ``h``, ``A_r^T H`` and ``B`` (all in the mixing dtype)."""

    h: Float[Tensor, "batch seq dim"]
    carried: Float[Tensor, "streams batch seq dim"]
    beta: Float[Tensor, "#streams #batch #seq 1"]


class HyperConnections(Strategy):
    """Static or dynamic hyper-connections with expansion rate ``rate`` (see module docstring)."""

    def __init__(
        self, d_model: int, n_layers: int, rate: int = 4, dynamic: bool = True,
        scale_init: float = 0.01, norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(n_layers)
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if rate < 1:
            raise ValueError(f"rate must be >= 1, got {rate}")
        if not isinstance(dynamic, bool):
            raise ValueError(f"dynamic must be True or False, got {dynamic!r}")
        if not norm_eps >= 0:
            raise ValueError(f"norm_eps must be >= 0, got {norm_eps}")
        self.d_model, self.rate, self.dynamic, self.norm_eps = d_model, rate, dynamic, norm_eps
        self.static_alpha = nn.ParameterList()  # per layer: (n, n + 1) = [A_m | A_r], flattened
        self.static_beta = nn.ParameterList()  # per layer: (n,)
        for layer in range(n_layers):
            alpha = torch.zeros(rate, rate + 1)
            alpha[layer % rate, 0] = 1.0
            alpha[:, 1:] = torch.eye(rate)
            self.static_alpha.append(nn.Parameter(alpha.flatten()))
            self.static_beta.append(nn.Parameter(torch.ones(rate)))
        if dynamic:  # per layer: [W_α | W_β] as one (n + 2, d) projection, and (s_α, s_β)
            self.proj = nn.ParameterList(nn.Parameter(torch.zeros(rate + 2, d_model)) for _ in range(n_layers))
            self.scales = nn.ParameterList(nn.Parameter(torch.full((2,), float(scale_init))) for _ in range(n_layers))

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "HyperConnections":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, **options)

    def connection(
        self, layer: int, hyper: Float[Tensor, "streams batch seq dim"]
    ) -> tuple[Float[Tensor, "#batch #seq outputs streams"], Float[Tensor, "#streams #batch #seq 1"]]:
        """Block ``layer``'s weights from :math:`H`: ``alpha`` as ``(…, 1 + n, n)`` (row 0 is
        :math:`A_m^\\top`, rows ``1..n`` are :math:`A_r^\\top`) and ``beta`` as ``(n, …, 1)``."""
        check_layer(layer, self.n_layers)
        n = self.rate
        alpha = self.static_alpha[layer].to(hyper.dtype).view(n, n + 1)
        beta = self.static_beta[layer].to(hyper.dtype)
        if not self.dynamic:
            return alpha.t()[None, None], beta.view(n, 1, 1, 1)
        # RMSNorm(H) W = rstd(H) · (H W): backward keeps H (kept anyway), not a normalised copy
        rstd = torch.rsqrt(hyper.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        dyn = torch.tanh((hyper @ self.proj[layer].to(hyper.dtype).t()) * rstd)  # (n, batch, seq, n + 2)
        s_alpha, s_beta = self.scales[layer].to(hyper.dtype).unbind(0)
        alpha = s_alpha * dyn[..., : n + 1] + alpha.view(n, 1, 1, n + 1)  # (n, batch, seq, n + 1)
        beta = s_beta * dyn[..., n + 1 :] + beta.view(n, 1, 1, 1)
        return alpha.permute(1, 2, 3, 0), beta

    def _enter(self, layer: int, hyper: Tensor) -> HyperState:
        alpha, beta = self.connection(layer, hyper)
        mixed = depth_aggregate(hyper, alpha)  # (1 + n, batch, seq, dim)
        # the block saves h: a copy of its own lets ``mixed`` be freed after block_output
        return HyperState(mixed[0].clone(memory_format=torch.contiguous_format), mixed[1:], beta)

    def init_state(self, x0: Float[Tensor, "batch seq dim"]) -> HyperState:
        mix_dtype = torch.promote_types(x0.dtype, torch.float32)
        return self._enter(0, x0.to(mix_dtype).expand(self.rate, *x0.shape).contiguous())

    def block_input(self, layer: int, x: Float[Tensor, "batch seq dim"], state: HyperState) -> BlockInput:
        return BlockInput(state.h.to(x.dtype))

    def block_output(self, layer: int, y: Float[Tensor, "batch seq dim"], state: HyperState):
        check_layer(layer, self.n_layers)
        h = state.h.to(y.dtype)
        # contiguous, so that the matmul in ``connection`` saves H itself, not a reshaped copy
        hyper = (state.carried + state.beta * (y - h).to(state.carried.dtype)).contiguous()
        if layer == self.n_layers - 1:
            return hyper.sum(0).to(y.dtype), None
        state = self._enter(layer + 1, hyper)
        return state.h.to(y.dtype), state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_layers={self.n_layers}, rate={self.rate}, dynamic={self.dynamic}"
