r"""mHC: Manifold-Constrained Hyper-Connections (Xie et al., DeepSeek-AI, arXiv 2512.24880).

Hyper-Connections' :math:`n` residual streams :math:`x_l \in \mathbb{R}^{n \times d}` (per token,
:math:`x_0 = (x, \dots, x)`), with each connection's mappings projected onto manifolds so that
the residual mixing cannot amplify the signal over depth:

.. math::

    x_{l+1} = \mathcal{H}^{\mathrm{res}}_l x_l
              + \mathcal{H}^{\mathrm{post}\top}_l\, \mathcal{F}(\mathcal{H}^{\mathrm{pre}}_l x_l)

with :math:`\mathcal{F}` the bare sublayer (pre-norm attention or MLP, no residual). From the
flattened stream :math:`\vec x_l = \mathrm{vec}(x_l) \in \mathbb{R}^{1 \times nd}` (stream-major)
and :math:`r = \lVert \vec x_l \rVert_2 / \sqrt{nd}` (an RMSNorm without scale: the paper folds
its weight into :math:`\varphi`; the division follows the projection, as in its fused kernels):

.. math::

    \tilde{\mathcal{H}}^{\mathrm{pre}} = \alpha^{\mathrm{pre}} \tfrac{1}{r} \vec x_l \varphi^{\mathrm{pre}}
        + b^{\mathrm{pre}}, \quad
    \tilde{\mathcal{H}}^{\mathrm{post}} = \alpha^{\mathrm{post}} \tfrac{1}{r} \vec x_l \varphi^{\mathrm{post}}
        + b^{\mathrm{post}}, \quad
    \tilde{\mathcal{H}}^{\mathrm{res}} = \alpha^{\mathrm{res}} \tfrac{1}{r}\,
        \mathrm{mat}(\vec x_l \varphi^{\mathrm{res}}) + b^{\mathrm{res}}

.. math::

    \mathcal{H}^{\mathrm{pre}} = \sigma(\tilde{\mathcal{H}}^{\mathrm{pre}}), \quad
    \mathcal{H}^{\mathrm{post}} = 2\sigma(\tilde{\mathcal{H}}^{\mathrm{post}}), \quad
    \mathcal{H}^{\mathrm{res}} = M^{(t_{\max})}, \quad
    M^{(0)} = \exp(\tilde{\mathcal{H}}^{\mathrm{res}}), \quad
    M^{(t)} = T_r\big(T_c(M^{(t-1)})\big)

(Sinkhorn–Knopp: :math:`T_c` / :math:`T_r` rescale every column / row to sum 1, so
:math:`\mathcal{H}^{\mathrm{res}}` is doubly stochastic up to the finite ``sinkhorn_iters``
:math:`= t_{\max}`, default 20; its rows — output stream :math:`i`'s weights on the input
streams — sum to 1 exactly). :math:`\varphi^{\mathrm{pre}}, \varphi^{\mathrm{post}} \in
\mathbb{R}^{nd \times n}`, :math:`\varphi^{\mathrm{res}} \in \mathbb{R}^{nd \times n^2}` are one
matrix ``proj[m]`` of shape :math:`(n^2 + 2n, nd)` (rows: pre, post, then :math:`\mathrm{mat}`
row-major, :math:`\mathcal{H}^{\mathrm{res}}_{ij}` at :math:`2n + in + j`), the biases one vector
``bias[m]``, :math:`(\alpha^{\mathrm{pre}}, \alpha^{\mathrm{post}}, \alpha^{\mathrm{res}})` the
vector ``scales[m]``. The model output is :math:`\sum_i x_{L,i}`, fed to the final norm.

**Forms.** ``form="authors"`` (default) is the paper's and DeepSeek-V4's: one connection around
each sublayer (:math:`2L` in all, connection :math:`m = 2\,\mathrm{layer} + \mathrm{sublayer}`).
``form="ours"`` wraps whole blocks (:math:`L` connections, :math:`\mathcal{F}` = attention output
+ MLP output), as :class:`~value_routing.HyperConnections`' ``"ours"``. The routing through the
``residual`` hook is HyperConnections' (this class reuses it); only the weights differ.

**Init.** :math:`\alpha = 0.01` (``scale_init``, the only init the paper states),
:math:`\varphi = 0` (``proj_std``), :math:`b^{\mathrm{post}} = b^{\mathrm{res}} = 0`, and read
weights :math:`\mathcal{H}^{\mathrm{pre}} = \sigma(b^{\mathrm{pre}})` of :math:`2/(n+1)` on stream
:math:`m \bmod n` and :math:`1/(n+1)` on the others — HC's one-hot :math:`A_m = e_{m \bmod n}`,
softened to the sigmoid's open range; they sum to 1 (for :math:`n = 1`: ½). The mappings are then
exactly :math:`\mathcal{H}^{\mathrm{post}} = \mathbf{1}`, :math:`\mathcal{H}^{\mathrm{res}} =
\tfrac1n J`: every stream is the baseline's residual stream, every sublayer reads exactly it, and
the final norm gets :math:`n` times it — the model *is* the baseline up to that norm's
:math:`\epsilon` (and, in our form, the float32 rounding of :math:`b^{\mathrm{pre}}`, ~1e-8; for
:math:`n = 1` the read weight ½ is ignored only by the authors' form, all of whose sublayers are
pre-normed). The read weights are unequal on purpose: with equal ones (e.g.
:math:`b = 0`, Hugging Face's DeepSeek-V4 init, which breaks the tie with a random ``fn`` instead)
the streams are interchangeable, their gradients equal, and they would stay copies of one another
for ever. ``proj_std`` > 0 draws :math:`\varphi \sim \mathcal{N}(0, \mathrm{proj\_std}^2)` (V4's:
0.02), an :math:`O(\alpha)` departure from the baseline. Biases and scales are 1-D parameters (not
decayed under the recipes' rule), the projections matrices (decayed).

**Where the paper and DeepSeek-V4 differ** (``DeepseekV4HyperConnection`` in transformers), we
follow the paper by default: it specifies the method, and its projection is the one whose
properties (rows summing to 1, columns within the Sinkhorn bound) the tests hold us to; V4's
floors are numerical guards of a bfloat16 production model. V4's floor ``hc_eps`` (1e-6) is added
to :math:`\sigma(\cdot)` for pre, to the first normalised matrix and to every Sinkhorn denominator
— our ``hc_eps``, default 0 (a zero row would then need residual logits spread wider than
float32's ``exp`` range, ~87). V4's flat-stream norm takes the model's ``rms_norm_eps`` (the
paper's table: 1e-20), ours ``norm_eps``, default the machine epsilon of the mixing dtype
(float32, or float64 for a float64 model; :meth:`eps`). V4 starts Sinkhorn from a softmax over the output streams —
:math:`T_c(\exp(\cdot))`, the same matrix without overflow; we do too. V4 stores the transposed
residual matrix (it mixes with ``comb.T @ x``) and collapses the streams before the final norm
with a learned :math:`\sigma`-weighted head; we sum them (HC's output). Both compute the
coefficients in float32; V4 then mixes in the activations' dtype, we keep the streams and the
mixing in float32 (or the input's dtype if wider), as :class:`~value_routing.HyperConnections`
does. Everything is per token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from value_routing.strategies.base import STRATEGIES, Strategy, fix_options
from value_routing.strategies.checks import check_int, check_number
from value_routing.strategies.hyper_connections import HC_FORMS, HyperConnections
from value_routing.typing import Float, Tensor, shapecheck


@shapecheck
def sinkhorn_knopp(
    logits: Float[Tensor, "*batch n n"], iters: int, eps: float = 0.0
) -> Float[Tensor, "*batch n n"]:
    r""":math:`M^{(t)} = T_r(T_c(M^{(t-1)}))` from :math:`M^{(0)} = \exp(\text{logits})`, ``iters``
    times; rows index the output streams, columns the input streams, so the result's rows sum to 1
    (exactly, up to ``eps``) and its columns approximately. The first :math:`T_c` is a softmax over
    the rows' axis (the same matrix, without overflow). ``eps`` is DeepSeek-V4's floor: added to
    the first normalised matrix and to every denominator (0: the paper's projection)."""
    m = torch.softmax(logits, dim=-2) + eps
    m = m / (m.sum(-1, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(-2, keepdim=True) + eps)
        m = m / (m.sum(-1, keepdim=True) + eps)
    return m


@STRATEGIES.register("mhc")
class ManifoldHyperConnections(HyperConnections):
    """Manifold-constrained hyper-connections with ``rate`` streams (see module docstring)."""

    def __init__(
        self, d_model: int, n_layers: int, rate: int = 4, sinkhorn_iters: int = 20, scale_init: float = 0.01,
        proj_std: float = 0.0, norm_eps: float | None = None, hc_eps: float = 0.0, form: str = "authors",
    ) -> None:
        # HyperConnections' routing (init_state, residual, the final sum) with weights of our own:
        # skip its __init__, which would build its static/tanh parametrisation
        Strategy.__init__(self, n_layers)
        if form not in HC_FORMS:
            raise ValueError(f"form must be one of {HC_FORMS}, got {form!r}")
        check_int("d_model", d_model, 1)
        check_int("rate", rate, 1)
        check_int("sinkhorn_iters", sinkhorn_iters, 1)
        for name, value in (("scale_init", scale_init), ("proj_std", proj_std), ("hc_eps", hc_eps)):
            check_number(name, value)
        if proj_std < 0 or hc_eps < 0:
            raise ValueError(f"proj_std and hc_eps must be >= 0, got proj_std={proj_std}, hc_eps={hc_eps}")
        check_number("norm_eps", norm_eps, 0, optional=True)
        self.d_model, self.rate, self.sinkhorn_iters, self.form = d_model, rate, sinkhorn_iters, form
        self.norm_eps, self.hc_eps = norm_eps, float(hc_eps)
        self.n_connections = n_layers * (2 if form == "authors" else 1)
        width, m = rate * (rate + 2), self.n_connections
        shape = (width, rate * d_model)
        self.proj = nn.ParameterList(
            nn.Parameter(proj_std * torch.randn(shape) if proj_std else torch.zeros(shape)) for _ in range(m)
        )
        self.bias = nn.ParameterList(nn.Parameter(self._static_init(k)) for k in range(m))
        self.scales = nn.ParameterList(nn.Parameter(torch.full((3,), float(scale_init))) for _ in range(m))

    @classmethod
    def preserving_options(cls, options):
        # the init is the baseline (module docstring) with φ = 0; with one stream our form's
        # residual would read σ(0) = ½ of it
        options = fix_options("mhc", options, {"proj_std": 0.0})
        if options.get("rate", 4) == 1 and options.get("form", "authors") == "ours":
            raise ValueError("mhc starts as the identity with rate=1 only in form='authors' (our form's "
                             "residual reads H_pre = ½ of the stream): pass preserve_function=False")
        return options

    def _static_init(self, m: int) -> Float[Tensor, " width"]:
        """Connection ``m``'s :math:`b`: pre :math:`\\sigma^{-1}` of :math:`2/(n+1)` on stream
        :math:`m \\bmod n` and of :math:`1/(n+1)` elsewhere (0 for :math:`n = 1`), post and res 0."""
        n, b = self.rate, torch.zeros(self.rate * (self.rate + 2))
        if n > 1:
            b[:n] = -math.log(n)  # σ⁻¹(1/(n+1))
            b[m % n] = math.log(2 / (n - 1))  # σ⁻¹(2/(n+1))
        return b

    def mappings(
        self, m: int, hyper: Float[Tensor, "streams batch seq dim"]
    ) -> tuple[Float[Tensor, "batch seq streams"], Float[Tensor, "batch seq streams"],
               Float[Tensor, "batch seq streams streams"]]:
        """Connection ``m``'s :math:`(\\mathcal{H}^{\\mathrm{pre}}, \\mathcal{H}^{\\mathrm{post}},
        \\mathcal{H}^{\\mathrm{res}})` per token, the last with rows = output streams. The norm's
        default epsilon is that of ``hyper``'s dtype, the mixing dtype (float32 at least)."""
        if not 0 <= m < self.n_connections:
            raise ValueError(f"connection index must be in [0, {self.n_connections}), got {m}")
        n, dim = self.rate, hyper.shape[-1]
        proj = self.proj[m].to(hyper.dtype).view(-1, n, dim)
        # vec(x) φ as a sum over streams: no stream-major copy of H is made (or saved for backward)
        mixes = sum(hyper[j] @ proj[:, j].t() for j in range(n))  # (batch, seq, n² + 2n)
        rstd = torch.rsqrt(hyper.pow(2).mean(dim=(0, -1)) + self.eps(hyper.dtype))[..., None]
        a_pre, a_post, a_res = self.scales[m].to(hyper.dtype).unbind(0)
        b = self.bias[m].to(hyper.dtype)
        mixes = mixes * rstd
        pre = torch.sigmoid(a_pre * mixes[..., :n] + b[:n]) + self.hc_eps
        post = 2 * torch.sigmoid(a_post * mixes[..., n : 2 * n] + b[n : 2 * n])
        res_logits = a_res * mixes[..., 2 * n :] + b[2 * n :]
        res = sinkhorn_knopp(res_logits.unflatten(-1, (n, n)), self.sinkhorn_iters, self.hc_eps)
        return pre, post, res

    def connection(self, m, hyper, dtype=None):
        """The mappings in HyperConnections' layout: ``alpha`` ``(…, 1 + n, n)`` (row 0 the read
        weights :math:`\\mathcal{H}^{\\mathrm{pre}}`, rows ``1..n`` :math:`\\mathcal{H}^{\\mathrm{res}}`)
        and ``beta`` ``(n, …, 1)`` (the write weights :math:`\\mathcal{H}^{\\mathrm{post}}`). ``dtype``
        (the activations') is not used: unlike HC's authors' norm, this one's epsilon follows the
        float32 mixing, not bfloat16 activations (whose 7.8e-3 would swamp a 0.02-scale stream's
        mean square and the paper's 1e-20 alike)."""
        pre, post, res = self.mappings(m, hyper)
        return torch.cat((pre.unsqueeze(-2), res), dim=-2), post.permute(2, 0, 1).unsqueeze(-1)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, rate={self.rate}, "
                f"sinkhorn_iters={self.sinkhorn_iters}, form={self.form!r}")
