r"""HyperConnections: ``n`` residual streams mixed by learned (optionally dynamic) weights.

The residual stream widens to a hyper hidden matrix :math:`H \in \mathbb{R}^{n \times d}`
(per token), :math:`H^0 = (x_0, \dots, x_0)`. Block :math:`k` (``layer``) with the
connection weights :math:`A_m \in \mathbb{R}^{n}`, :math:`A_r \in \mathbb{R}^{n \times n}`,
:math:`B \in \mathbb{R}^{n}` computes

.. math::

    h = A_m^\top H^{k}, \qquad
    H^{k+1} = B^\top\, \mathcal{T}(h) + A_r^\top H^{k}, \qquad
    \mathcal{T}(h) = \mathrm{Attn}(\mathrm{norm}(h)) + \mathrm{MLP}(\mathrm{norm}(a)), \quad
    a = h + \mathrm{Attn}(\mathrm{norm}(h))

(one hyper-connection around each whole block: :math:`\mathcal{T}` is what the block adds to
its input, summed from the two sublayer outputs by the ``residual`` hook). The output is
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

**Forms.** ``form="ours"`` is the above: one hyper-connection around each whole block.
``form="authors"`` is the form of the SATFormer authors' public code: one hyper-connection
around the attention sublayer and one around the MLP, each with its own weights (``2L`` in
all, :math:`A_m` of connection :math:`m = 2k + s` initialised to :math:`e_{m \bmod n}`), and
:math:`\mathcal{T}` the bare sublayer (pre-norm, no residual):

.. math::

    H^{k+\frac12} = B_{2k}^\top\, \mathrm{Attn}(\mathrm{norm}(A_{m,2k}^\top H^k)) + A_{r,2k}^\top H^k,
    \qquad
    H^{k+1} = B_{2k+1}^\top\, \mathrm{MLP}(\mathrm{norm}(A_{m,2k+1}^\top H^{k+\frac12}))
              + A_{r,2k+1}^\top H^{k+\frac12}

Both forms route through the ``residual`` hook only. Its dynamic norm has a learned scale
:math:`g` (init 1), :math:`\bar H = g \odot H/\sqrt{\mathrm{mean}(H^2) + \epsilon}`, with
:math:`\epsilon` the machine epsilon of the model's activation dtype unless ``norm_eps`` is given
(their norm is ``nn.RMSNorm`` without ``eps``, which takes ``torch.finfo(input.dtype).eps``:
float32's for a float32 model, float64's for a float64 one, bfloat16's for a bfloat16 one).

The mixing math (norm, weights and the aggregation over streams) runs in float32 (or the
input's dtype if wider), and :math:`H` is kept in that dtype. All operations are per token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from value_routing.kernels.depth_aggregate import depth_aggregate
from value_routing.strategies.base import STRATEGIES, BlockInput, ModelDims, Strategy, check_layer
from value_routing.strategies.checks import check_number
from value_routing.typing import Float, Tensor


#: ``form`` values: one connection per block (ours) or per sublayer (the authors' code).
HC_FORMS: tuple[str, ...] = ("ours", "authors")


class HyperState(NamedTuple):
    """What the next connection needs: its input ``h``, ``A_r^T H`` and ``B`` (all in the mixing
    dtype); ``pending``, in our form, the attention output waiting for the MLP's to form T."""

    h: Float[Tensor, "batch seq dim"]
    carried: Float[Tensor, "streams batch seq dim"]
    beta: Float[Tensor, "#streams #batch #seq 1"]
    pending: Float[Tensor, "batch seq dim"] | None = None


@STRATEGIES.register("hyper")
class HyperConnections(Strategy):
    """Static or dynamic hyper-connections with expansion rate ``rate`` (see module docstring)."""

    def __init__(
        self, d_model: int, n_layers: int, rate: int = 4, dynamic: bool = True,
        scale_init: float = 0.01, norm_eps: float | None = None, form: str = "ours",
    ) -> None:
        super().__init__(n_layers)
        if form not in HC_FORMS:
            raise ValueError(f"form must be one of {HC_FORMS}, got {form!r}")
        if norm_eps is None and form == "ours":
            norm_eps = 1e-6
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if rate < 1:
            raise ValueError(f"rate must be >= 1, got {rate}")
        if not isinstance(dynamic, bool):
            raise ValueError(f"dynamic must be True or False, got {dynamic!r}")
        check_number("norm_eps", norm_eps, 0, optional=True)
        check_number("scale_init", scale_init)
        self.d_model, self.rate, self.dynamic, self.norm_eps, self.form = d_model, rate, dynamic, norm_eps, form
        self.n_connections = n_layers * (2 if form == "authors" else 1)
        self.static_alpha = nn.ParameterList()  # per connection: (n, n + 1) = [A_m | A_r], flattened
        self.static_beta = nn.ParameterList()  # per connection: (n,)
        for m in range(self.n_connections):
            alpha = torch.zeros(rate, rate + 1)
            alpha[m % rate, 0] = 1.0
            alpha[:, 1:] = torch.eye(rate)
            self.static_alpha.append(nn.Parameter(alpha.flatten()))
            self.static_beta.append(nn.Parameter(torch.ones(rate)))
        if dynamic:  # per connection: [W_α | W_β] as one (n + 2, d) projection, and (s_α, s_β)
            m = self.n_connections
            self.proj = nn.ParameterList(nn.Parameter(torch.zeros(rate + 2, d_model)) for _ in range(m))
            self.scales = nn.ParameterList(nn.Parameter(torch.full((2,), float(scale_init))) for _ in range(m))
            if form == "authors":  # the learned scale g of the dynamic branch's RMSNorm
                self.norm_scale = nn.ParameterList(nn.Parameter(torch.ones(d_model)) for _ in range(m))

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "HyperConnections":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, **options)

    @classmethod
    def preserving_options(cls, options):
        # the identity init; the summed output is rate × the baseline's stream (see the module docstring)
        return dict(options)

    def eps(self, dtype: torch.dtype) -> float:
        """The dynamic norm's epsilon for a model whose activations are ``dtype``: ``norm_eps``, or
        (when it is ``None``, the authors' form's default) ``dtype``'s machine epsilon."""
        return torch.finfo(dtype).eps if self.norm_eps is None else self.norm_eps

    def connection(
        self, m: int, hyper: Float[Tensor, "streams batch seq dim"], dtype: torch.dtype | None = None
    ) -> tuple[Float[Tensor, "#batch #seq outputs streams"], Float[Tensor, "#streams #batch #seq 1"]]:
        """Connection ``m``'s weights from :math:`H` (``m`` is the block for ``form="ours"``,
        ``2·layer + sublayer`` for ``"authors"``): ``alpha`` as ``(…, 1 + n, n)`` (row 0 is
        :math:`A_m^\\top`, rows ``1..n`` are :math:`A_r^\\top`) and ``beta`` as ``(n, …, 1)``.
        ``dtype`` is the model's activation dtype (default: ``hyper``'s), which sets the norm's
        default epsilon (:meth:`eps`)."""
        if not 0 <= m < self.n_connections:
            raise ValueError(f"connection index must be in [0, {self.n_connections}), got {m}")
        n = self.rate
        alpha = self.static_alpha[m].to(hyper.dtype).view(n, n + 1)
        beta = self.static_beta[m].to(hyper.dtype)
        if not self.dynamic:
            return alpha.t()[None, None], beta.view(n, 1, 1, 1)
        proj = self.proj[m] if self.form == "ours" else self.proj[m] * self.norm_scale[m]  # (g ⊙ x) W = x (g W)
        # RMSNorm(H) W = rstd(H) · (H W): backward keeps H (kept anyway), not a normalised copy
        rstd = torch.rsqrt(hyper.pow(2).mean(-1, keepdim=True) + self.eps(dtype or hyper.dtype))
        dyn = torch.tanh((hyper @ proj.to(hyper.dtype).t()) * rstd)  # (n, batch, seq, n + 2)
        s_alpha, s_beta = self.scales[m].to(hyper.dtype).unbind(0)
        alpha = s_alpha * dyn[..., : n + 1] + alpha.view(n, 1, 1, n + 1)  # (n, batch, seq, n + 1)
        beta = s_beta * dyn[..., n + 1 :] + beta.view(n, 1, 1, 1)
        return alpha.permute(1, 2, 3, 0), beta

    def _enter(self, m: int, hyper: Tensor, dtype: torch.dtype) -> HyperState:
        alpha, beta = self.connection(m, hyper, dtype)
        mixed = depth_aggregate(hyper, alpha)  # (1 + n, batch, seq, dim)
        # the block saves h: a copy of its own lets ``mixed`` be freed after this residual
        return HyperState(mixed[0].clone(memory_format=torch.contiguous_format), mixed[1:], beta)

    def init_state(self, x0: Float[Tensor, "batch seq dim"], tokens=None) -> tuple[BlockInput, HyperState]:
        mix_dtype = torch.promote_types(x0.dtype, torch.float32)
        state = self._enter(0, x0.to(mix_dtype).expand(self.rate, *x0.shape).contiguous(), x0.dtype)
        return BlockInput(state.h.to(x0.dtype)), state

    def residual(self, layer: int, sublayer: int, x: Tensor, out: Tensor, state: HyperState | None):
        """Write sublayer ``sublayer``'s output into the streams and read the next input from them:
        after every sublayer (the authors' form) or, in ours, after the MLP with T = attention + MLP."""
        check_layer(layer, self.n_layers)
        if sublayer not in (0, 1):
            raise ValueError(f"sublayer must be 0 (attention) or 1 (MLP), got {sublayer}")
        if state is None:
            raise ValueError("hyper-connections need the state of init_state / the previous sublayer, got None")
        if self.form == "ours":
            if sublayer == 0:  # inside the block: the plain residual, T completed after the MLP
                return x + out, state._replace(pending=out)
            if state.pending is None:
                raise ValueError("our form joins after the MLP: call residual(layer, 0, ...) first")
            out, m = state.pending.to(state.carried.dtype) + out.to(state.carried.dtype), layer + 1
        else:
            m = 2 * layer + sublayer + 1
        hyper = (state.carried + state.beta * out.to(state.carried.dtype)).contiguous()
        if m == self.n_connections:
            return hyper.sum(0).to(x.dtype), None
        state = self._enter(m, hyper, x.dtype)
        return state.h.to(x.dtype), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, rate={self.rate}, dynamic={self.dynamic}, "
                f"form={self.form!r}")
