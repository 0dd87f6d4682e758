r"""StaticValueResidual (ResFormer): a fixed or learned scalar mix of layer 0's values.

For every layer :math:`n \ge 1`

.. math:: V'_n = \lambda_{1,n} V_1 + \lambda_{2,n} V_n

with three parameterisations (``mode``):

* ``"fixed"``: constant :math:`\lambda_1, \lambda_2` (ResFormer's default is 0.5, 0.5);
* ``"learnable"``: one learned pair per layer, initialised to ``lambda1``, ``lambda2``;
* ``"softmax"``: :math:`\lambda_{1,n} = s\cdot\mathrm{softmax}(\ell)_n` over layers
  :math:`1..L-1` with :math:`s` initialised to :math:`L` and logits :math:`\ell` to 0;
  :math:`\lambda_{2,n}` learned per layer, initialised to ``lambda2``.

Layer 0 is the source of :math:`V_1` and is never mixed. The function-preserving start
(:meth:`~value_routing.strategies.base.Strategy.preserving_options`) is ``lambda1=0, lambda2=1``: exactly
:math:`V'_n = V_n`, and both weights get gradients (:math:`\partial/\partial\lambda_1 = V_1`).
"""

from __future__ import annotations

import torch
from torch import nn

from value_routing.strategies.base import STRATEGIES, ValueResidual, fix_options
from value_routing.strategies.checks import check_number
from value_routing.typing import Float, Tensor

STATIC_MODES: tuple[str, ...] = ("fixed", "learnable", "softmax")


@STRATEGIES.register("static")
class StaticValueResidual(ValueResidual):
    """ResFormer value residual with scalar per-layer weights (see module docstring)."""

    def __init__(
        self, n_layers: int, mode: str = "learnable", lambda1: float = 0.5, lambda2: float = 0.5
    ) -> None:
        super().__init__(n_layers)
        if mode not in STATIC_MODES:
            raise ValueError(f"mode must be one of {STATIC_MODES}, got {mode!r}")
        check_number("lambda1", lambda1)
        check_number("lambda2", lambda2)
        self.mode = mode
        n_mixed = max(n_layers - 1, 1)
        if mode == "fixed":
            self.register_buffer("lambda1", torch.full((n_mixed,), float(lambda1)), persistent=False)
            self.register_buffer("lambda2", torch.full((n_mixed,), float(lambda2)), persistent=False)
        elif mode == "learnable":
            self.lambda1 = nn.Parameter(torch.full((n_mixed,), float(lambda1)))
            self.lambda2 = nn.Parameter(torch.full((n_mixed,), float(lambda2)))
        else:
            self.lambda_logits = nn.Parameter(torch.zeros(n_mixed))
            self.lambda_scale = nn.Parameter(torch.tensor(float(n_layers)))
            self.lambda2 = nn.Parameter(torch.full((n_mixed,), float(lambda2)))

    @classmethod
    def preserving_options(cls, options):
        if options.get("mode") == "softmax":
            raise ValueError("static mode='softmax' starts with λ1 = L·softmax(0) > 0, never as the identity: "
                             "use mode 'learnable' or 'fixed', or pass preserve_function=False")
        return fix_options("static", options, {"lambda1": 0.0, "lambda2": 1.0})

    def lambdas(self) -> tuple[Float[Tensor, " mixed_layers"], Float[Tensor, " mixed_layers"]]:
        """Per-layer ``(λ1, λ2)`` for layers ``1..L-1`` (index ``n-1``)."""
        if self.mode == "softmax":
            return self.lambda_scale * torch.softmax(self.lambda_logits, dim=0), self.lambda2
        return self.lambda1, self.lambda2

    def mix_v1(self, layer, v, v1, h, logits=None):
        lam1, lam2 = self.lambdas()
        if lam2.requires_grad:  # dλ2 needs v: save a copy, not the QKV output that v is a slice of
            v = v.contiguous()
        return lam1[layer - 1].to(v.dtype) * v1 + lam2[layer - 1].to(v.dtype) * v

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, mode={self.mode!r}"
