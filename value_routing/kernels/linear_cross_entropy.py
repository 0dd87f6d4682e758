r"""LM head + cross-entropy without the ``(tokens, vocab)`` logits: chunks over tokens.

.. math::

    \mathcal{L} = \frac{1}{|T|} \sum_{t \in T} \Big(\log \sum_v e^{h_t \cdot w_v} - h_t \cdot w_{y_t}\Big),
    \qquad T = \{t : y_t \ne \text{ignore\_index}\}

with gradients :math:`\partial\mathcal{L}/\partial z_t = (\mathrm{softmax}(z_t) - e_{y_t}) / |T|` for
the logits :math:`z_t = W h_t`, so :math:`\partial\mathcal{L}/\partial h_t = W^\top \partial z_t` and
:math:`\partial\mathcal{L}/\partial W = \sum_t \partial z_t\, h_t^\top`.

At a vocabulary of 32 000 and 4 096 tokens the logits alone are 0.5 GB in float32, and the plain
path keeps them (and their softmax) for backward. :class:`LinearCrossEntropy` instead walks over
``chunk_size`` tokens at a time and computes each chunk's loss *and* its gradients in the forward
(the Liger-Kernel approach): only ``chunk_size × vocab`` logits ever exist, and backward just
scales the stored ``dh`` (tokens × dim) and ``dW`` (vocab × dim) by the incoming gradient. The
logits are computed in float32 at least (float64 stays float64). :func:`linear_cross_entropy_reference`
is the plain formula the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from value_routing.typing import Float, Int, Tensor

#: Logit elements per chunk by default (64 MB in float32): ``chunk_size = max(1, LOGITS_PER_CHUNK // vocab)``.
LOGITS_PER_CHUNK = 1 << 24


def linear_cross_entropy_reference(
    h: Float[Tensor, "tokens dim"], weight: Float[Tensor, "vocab dim"], targets: Int[Tensor, " tokens"],
    ignore_index: int = -100,
) -> Float[Tensor, ""]:
    """``cross_entropy(h @ weightᵀ, targets)``, mean over non-ignored tokens (materialises the logits)."""
    logits = (h @ weight.t()).to(torch.promote_types(h.dtype, torch.float32))
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def _chunk_loss(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, want_grad: bool):
    """Summed loss of one chunk and, if ``want_grad``, ``dz = softmax - onehot`` (ignored rows zero)."""
    logits = (h @ weight.t()).to(torch.promote_types(h.dtype, torch.float32))
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    lse = torch.logsumexp(logits, dim=-1)
    loss = ((lse - logits.gather(1, safe[:, None]).squeeze(1)) * valid).sum()
    if not want_grad:
        return loss, None
    dz = logits.sub_(lse[:, None]).exp_()  # softmax, in place: one chunk of logits alive at a time
    dz.scatter_add_(1, safe[:, None], -valid[:, None].to(dz.dtype))
    return loss, dz.mul_(valid[:, None])


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weightᵀ``; gradients computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk_size: int) -> Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(h.dtype, torch.float32)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], chunk_size):
            hc, tc = h[start : start + chunk_size], targets[start : start + chunk_size]
            loss, dz = _chunk_loss(hc, weight, tc, ignore_index, want_h or want_w)
            total = total + loss
            if grad_h is not None:
                grad_h[start : start + chunk_size] = (dz @ weight.to(acc)).to(h.dtype)
            if grad_w is not None:
                grad_w.addmm_(dz.t(), hc.to(acc))
        count = (targets != ignore_index).sum().to(acc)
        ctx.grads = (grad_h, grad_w, count)  # not save_for_backward: results, not inputs, of the forward
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        grad_h, grad_w, count = ctx.grads
        scale = grad / count
        dh = None if grad_h is None else grad_h * scale.to(grad_h.dtype)
        dw = None if grad_w is None else (grad_w * scale).to(ctx.weight_dtype)
        return dh, dw, None, None, None


def linear_cross_entropy(
    h: Float[Tensor, "tokens dim"],
    weight: Float[Tensor, "vocab dim"],
    targets: Int[Tensor, " tokens"],
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Float[Tensor, ""]:
    """Mean next-token loss of ``h @ weightᵀ`` over non-ignored targets, never holding all logits.

    ``chunk_size`` tokens per chunk (default ``LOGITS_PER_CHUNK // vocab``). Without gradients
    the chunks are scored and dropped; with them, see :class:`LinearCrossEntropy`.
    """
    if h.ndim != 2 or weight.ndim != 2 or h.shape[1] != weight.shape[1] or targets.shape != h.shape[:1]:
        raise ValueError(f"h (tokens, dim), weight (vocab, dim) and targets (tokens,) must agree, got "
                         f"{tuple(h.shape)}, {tuple(weight.shape)} and {tuple(targets.shape)}")
    chunk = chunk_size or max(1, LOGITS_PER_CHUNK // weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_size must be None or >= 1, got {chunk_size}")
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk)
    total = sum(_chunk_loss(h[s : s + chunk], weight, targets[s : s + chunk], ignore_index, False)[0]
                for s in range(0, h.shape[0], chunk))
    return total / (targets != ignore_index).sum()
