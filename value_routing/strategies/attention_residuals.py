r"""AttentionResiduals (AttnRes): every sublayer reads a softmax over depth of the earlier outputs.

Kimi Team, *Attention Residuals* (arXiv 2603.15031); official code MoonshotAI/Attention-Residuals
(its PyTorch pseudocode), run in the same form by the fla model zoo (``attnres_block_size``).

Number the sublayers :math:`s = 0 .. 2L-1` (``s = 2·layer + sublayer``: attention, then MLP) and
let :math:`o_s = f_s(\mathrm{norm}(h_s))` be sublayer :math:`s`'s output, :math:`x_0` the
embedding. Sublayer 0 reads :math:`h_0 = x_0`; the input of sublayer :math:`m = 1 .. 2L-1` and,
for :math:`m = 2L`, the input of the final norm (and LM head) is

.. math::

    h_m = \sum_{i} \alpha_{m,i}\, v_i, \qquad
    \alpha_{m,\cdot} = \mathrm{softmax}_i\big(w_m^\top \mathrm{RMSNorm}_m(v_i)\big), \qquad
    \mathrm{RMSNorm}_m(v) = g_m \odot \frac{v}{\sqrt{\mathrm{mean}(v^2) + \epsilon}}

over the sources :math:`v_i` of mix :math:`m` (the keys are the values, normed), with one learned
pseudo-query :math:`w_m \in \mathbb{R}^d` and key-norm scale :math:`g_m` per mix (:math:`2L` of
each). The sources, with block size :math:`S` (``block_size``, counted in sublayers as the
official code and fla count it: :math:`S/2` layers per block):

.. math::

    v_0 = x_0, \qquad v_n = b_n = \sum_{j=(n-1)S}^{nS-1} o_j \ \ (n = 1..\lfloor m/S \rfloor),
    \qquad v_{\mathrm{p}} = \sum_{j=\lfloor m/S \rfloor S}^{m-1} o_j \ \text{(if not empty)}

i.e. the embedding, the completed blocks and the current block's partial sum. **Full AttnRes**
is :math:`S = 1` (the default): every earlier sublayer output is its own source, :math:`m + 1`
sources for mix :math:`m`. **Block AttnRes** is an even :math:`S \ge 2` (the paper recommends
about 8 blocks, :math:`S \approx 2L/8`). Within a block the outputs add up as a standard
residual; the embedding is always a source of its own.

Initialisation (the paper's): :math:`w_m = 0`, :math:`g_m = 1`, so every mix is the uniform
average of its sources, :math:`h_m = (x_0 + \sum_{j<m} o_j) / n_m`: the baseline's residual
stream divided by the number of sources, which the scale-invariant pre-norms and final norm do not
see (the model *is* the baseline up to the norms' :math:`\epsilon`). Queries and scales are 1-D
parameters (no weight decay under the recipes' "matrices only" rule).

``scale_by_sources=True`` multiplies every mix by its number of sources, :math:`h_m = n_m \sum_i
\alpha_{m,i} v_i`: a uniform mix is then the *sum* of the sources, :math:`x_0 + \sum_{j<m} o_j`,
the baseline's stream itself (for Block AttnRes too: the blocks and the partial sum add up to it),
so the start is the baseline in exact arithmetic, :math:`\epsilon` included (in floating point up to
the rounding of :math:`n_m \cdot \frac{1}{n_m}`). That is the function-preserving start
(:meth:`~value_routing.strategies.base.Strategy.preserving_options`). A constant factor on a mix is
invisible to the sublayer's pre-norm but for :math:`\epsilon`, and the learned weights keep their
meaning (a convex mix, scaled). The queries learn from the first step, the key-norm scales from the
second (their gradient is :math:`\propto w_m = 0`), as in the paper's own start.

Memory: the sources are written once into one buffer of :math:`1 + \lfloor 2L/S \rfloor` slots
(:mod:`~value_routing.strategies.depth_states`), :math:`O(L d)` per token for Full and
:math:`O(N d)` for Block (:math:`N` blocks), plus the running partial sum; an autograd function
computes logits, softmax and weighted sum over a view of the filled slots and returns the
sources' gradients to the slot handles, keeping nothing per source but the buffer (logits and
norms are recomputed in backward). Inside ``torch.compile`` the sources are a tuple and the mix
is unrolled; ``impl="stack"`` stacks the sources at every mix (the naive variant benchmarks
compare against). The mixing (sources, partial sums, norms, softmax) runs in float32, or the
input's dtype if wider. Every operation is per token, so decoding with a KV cache needs only the
new tokens' sources.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from value_routing.kernels.depth_aggregate import depth_aggregate
from value_routing.strategies.base import STRATEGIES, BlockInput, ModelDims, Strategy, check_layer, fix_options
from value_routing.strategies.checks import check_number
from value_routing.strategies.depth_states import (
    DepthStates,
    append_depth_state,
    check_impl,
    init_depth_states,
    weighted_sum,
)
from value_routing.typing import Float, Tensor


class AttnResState(NamedTuple):
    """The sources so far: the embedding and the completed blocks (Full: every output) in
    ``blocks``, and the current block's partial sum (``None`` while it is empty)."""

    blocks: DepthStates
    partial: Float[Tensor, "batch seq dim"] | None = None


def _slot_logits(v: Tensor, u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(u · v / rms(v), 1 / rms(v))`` over the last axis, without a squared copy of ``v``."""
    rstd = torch.rsqrt(torch.linalg.vector_norm(v, dim=-1).square() / v.shape[-1] + eps)
    return rstd * (v @ u), rstd


class _SoftmaxSlots(torch.autograd.Function):
    """The depth softmax over the buffer view ``slots`` and ``partial``, gradients to the handles.

    ``u = w ⊙ g`` folds the key-norm scale into the query. The view is held on ``ctx`` (write-once
    slots, see :mod:`~value_routing.strategies.depth_states`); backward recomputes the logits.
    """

    @staticmethod
    def forward(ctx, slots: Tensor, partial: Tensor | None, u: Tensor, eps: float, *handles: Tensor) -> Tensor:
        groups = (slots,) if partial is None else (slots, partial[None])
        logits = [_slot_logits(g, u, eps)[0] for g in groups]
        alpha = torch.cat(logits).softmax(0)  # (sources, batch, seq)
        out = depth_aggregate(slots, alpha[: len(slots)].permute(1, 2, 0)[:, :, None])[0]
        if partial is not None:
            out = out + alpha[-1, ..., None] * partial
        ctx.save_for_backward(u, partial)
        ctx.slots, ctx.eps = slots, eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        u, partial = ctx.saved_tensors
        groups = (ctx.slots,) if partial is None else (ctx.slots, partial[None])
        z, rstd = (torch.cat(t) for t in zip(*(_slot_logits(g, u, ctx.eps) for g in groups)))
        alpha = z.softmax(0)
        dots = torch.cat([(g * grad).sum(-1) for g in groups])  # ⟨dL/dh, v_i⟩
        dz = alpha * (dots - (alpha * dots).sum(0))
        c1 = dz * rstd  # ∂z/∂v = rstd · u − z · rstd² · v / d
        c2 = c1 * z * rstd / u.shape[0]
        grads, du, start = [], torch.zeros_like(u), 0
        for g in groups:
            n = len(g)
            a, b1, b2 = (t[start : start + n, ..., None] for t in (alpha, c1, c2))
            grads.append(a * grad + b1 * u - b2 * g)
            du = du + b1.flatten() @ g.reshape(-1, g.shape[-1])
            start += n
        grad_partial = grads[1][0] if partial is not None and ctx.needs_input_grad[1] else None
        return None, grad_partial, du, None, *grads[0].unbind(0)


def attention_residual(
    states: DepthStates, partial: Float[Tensor, "batch seq dim"] | None, u: Float[Tensor, " dim"], eps: float
) -> Float[Tensor, "batch seq dim"]:
    r""":math:`\sum_i \mathrm{softmax}_i(u^\top v_i / \mathrm{rms}(v_i))\, v_i` over the filled
    slots of ``states`` and ``partial`` (when given), with ``u = w ⊙ g``."""
    if states.form == "buffer":
        return _SoftmaxSlots.apply(states.buffer[: len(states.handles)], partial, u, eps, *states.handles)
    sources = (*states.handles, *(() if partial is None else (partial,)))

    def logits(v: Tensor) -> Tensor:
        return torch.rsqrt(v.pow(2).mean(-1) + eps) * (v @ u)

    if states.form == "stack":
        stacked = torch.stack(sources)
        return depth_aggregate(stacked, logits(stacked).softmax(0).permute(1, 2, 0)[:, :, None])[0]
    alpha = torch.stack([logits(v) for v in sources]).softmax(0)  # (sources, batch, seq): scalars only
    return weighted_sum(sources, alpha.permute(1, 2, 0)[:, :, None])[0]


@STRATEGIES.register("attnres")
class AttentionResiduals(Strategy):
    """Full (``block_size=1``) or Block Attention Residuals (see module docstring for the equation)."""

    def __init__(
        self, d_model: int, n_layers: int, block_size: int = 1, impl: str = "buffer", norm_eps: float = 1e-6,
        scale_by_sources: bool = False,
    ) -> None:
        super().__init__(n_layers)
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or not (
            block_size == 1 or (block_size >= 2 and block_size % 2 == 0)
        ):
            raise ValueError(
                "block_size must be 1 (Full AttnRes) or an even number of sublayers >= 2 (Block AttnRes, "
                f"block_size // 2 layers per block), got {block_size!r}"
            )
        check_number("norm_eps", norm_eps, 0)
        if not isinstance(scale_by_sources, bool):
            raise ValueError(f"scale_by_sources must be True or False, got {scale_by_sources!r}")
        self.scale_by_sources = scale_by_sources
        self.d_model, self.block_size, self.impl, self.norm_eps = d_model, block_size, check_impl(impl), norm_eps
        # mix m = 1 .. 2L (the inputs of sublayers 1 .. 2L-1, then the final norm's) is index m - 1
        self.queries = nn.ParameterList(nn.Parameter(torch.zeros(d_model)) for _ in range(2 * n_layers))
        self.key_scales = nn.ParameterList(nn.Parameter(torch.ones(d_model)) for _ in range(2 * n_layers))

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "AttentionResiduals":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, **options)

    @classmethod
    def preserving_options(cls, options):
        # a uniform mix of the sources, times their number, is their sum: the baseline's stream
        return fix_options("attnres", options, {"scale_by_sources": True})

    @property
    def n_slots(self) -> int:
        """Buffer slots: the embedding and every completed block."""
        return 1 + 2 * self.n_layers // self.block_size

    def sources(self, m: int) -> list[range]:
        """The sources of mix ``m`` as ranges of sublayer outputs they sum (the embedding first, as
        ``range(0)``); ``m = 2L`` is the final norm's input."""
        if not 1 <= m <= 2 * self.n_layers:
            raise ValueError(f"mix index must be in [1, {2 * self.n_layers}], got {m}")
        s = self.block_size
        return [range(0), *(range(j, min(j + s, m)) for j in range(0, m, s))]

    def init_state(self, x0: Float[Tensor, "batch seq dim"], tokens=None) -> tuple[BlockInput, AttnResState]:
        mixed = x0.to(torch.promote_types(x0.dtype, torch.float32))
        return BlockInput(x0), AttnResState(init_depth_states(mixed, self.n_slots, self.impl))

    def residual(
        self, layer: int, sublayer: int, x: Float[Tensor, "batch seq dim"], out: Float[Tensor, "batch seq dim"],
        state: AttnResState | None,
    ) -> tuple[Float[Tensor, "batch seq dim"], AttnResState]:
        """Add sublayer ``sublayer``'s output to the sources and return the next input: the MLP's
        (``sublayer=0``), the next attention's or, after the last MLP, the final norm's."""
        check_layer(layer, self.n_layers)
        if sublayer not in (0, 1):
            raise ValueError(f"sublayer must be 0 (attention) or 1 (MLP), got {sublayer}")
        if state is None:
            raise ValueError("attention residuals need the state of init_state / the previous sublayer, got None")
        m = 2 * layer + sublayer + 1
        blocks, dtype = state.blocks, state.blocks.handles[0].dtype  # the mixing dtype
        partial = out.to(dtype) if state.partial is None else state.partial + out.to(dtype)
        if m % self.block_size == 0:  # the block is complete: it becomes a source of its own
            blocks, partial = append_depth_state(blocks, partial), None
        u = self.queries[m - 1].to(dtype) * self.key_scales[m - 1].to(dtype)
        h = attention_residual(blocks, partial, u, self.norm_eps)
        if self.scale_by_sources:
            h = h * (len(blocks.handles) + (partial is not None))
        return h.to(x.dtype), AttnResState(blocks, partial)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, block_size={self.block_size}, "
                f"impl={self.impl!r}, norm_eps={self.norm_eps}, scale_by_sources={self.scale_by_sources}")
