r"""EmbeddingShortcut: every block's input gets the embedding output back (modded-nanogpt's x0).

With :math:`x_0` the embedding output and :math:`x_\ell` the residual stream entering block
:math:`\ell` (:math:`x_0` for block 0, block :math:`\ell-1`'s output after), block :math:`\ell`
reads

.. math:: \tilde x_\ell = \lambda_{r,\ell}\, x_\ell + \lambda_{0,\ell}\, x_0,
          \qquad x_{\ell+1} = \mathrm{block}_\ell(\tilde x_\ell)

for every block :math:`\ell = 0 \dots L-1` (block 0 too, where it rescales :math:`x_0` by
:math:`\lambda_{r,0} + \lambda_{0,0}`); the final norm reads :math:`x_L` unmixed. The scalars are
learned per layer and start at :math:`\lambda_r = 1, \lambda_0 = 0` (``resid_init``,
``x0_init``): the baseline. They are 1-D parameters, so the recipes do not decay them.
These defaults with ``x0_norm=False`` are the function-preserving start
(:meth:`~value_routing.strategies.base.Strategy.preserving_options`): exactly the baseline, and every
new parameter gets a gradient on the first step (:math:`\partial/\partial\lambda_0 \propto x_0`,
:math:`\partial/\partial w \propto n(x)\, x_0`).

``gate=True`` makes :math:`\lambda_0` per token,

.. math:: \lambda_{0,\ell}(t) = \lambda_{0,\ell} + w_\ell^\top n(x_{\ell,t}), \qquad
          n(x) = x / \sqrt{\mathrm{mean}(x^2) + \epsilon}

with :math:`w_\ell \in \mathbb{R}^{d}` initialised to zero (so it starts at the static value) and
:math:`\epsilon` = ``norm_eps``.

This follows KellerJordan/modded-nanogpt's ``train_gpt.py`` from its 2024-11-06 record ("value and
embedding skip connections") on: ``x = lambdas[0] * x + lambdas[1] * x0`` at the start of every
block, ``lambdas`` initialised to ``[1, 0]``, and ``x = x0 = norm(embed(idx))``: the embedding
is RMS-normalised (no learned scale) before it becomes both the stream and the shortcut. Our
model has no embedding norm, so :math:`x_0` is the raw embedding output by default;
``x0_norm=True`` takes modded-nanogpt's :math:`x_0 = n(\mathrm{embed})` for both. Later records
moved the shortcut inside the attention residual and, in 2026, made its weight per token from a
MUDD-style gate; the per-token form here is our simpler linear one.

Routed through ``init_state`` and ``block_output``; the state is :math:`x_0`. Every operation is
per token, so decoding with a KV cache needs only the new tokens' :math:`x_0`.
"""

from __future__ import annotations

import torch
from torch import nn

from value_routing.strategies.base import (
    STRATEGIES,
    BlockInput,
    ModelDims,
    Strategy,
    check_layer,
    fix_options,
    rms_normalize,
)
from value_routing.strategies.checks import check_number
from value_routing.typing import Float, Tensor, shapecheck


@STRATEGIES.register("shortcut")
class EmbeddingShortcut(Strategy):
    """Learned per-layer (optionally per-token) mix of the embedding into every block input."""

    def __init__(
        self, d_model: int, n_layers: int, gate: bool = False, x0_norm: bool = False,
        resid_init: float = 1.0, x0_init: float = 0.0, norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(n_layers)
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        for name, flag in (("gate", gate), ("x0_norm", x0_norm)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        check_number("resid_init", resid_init)
        check_number("x0_init", x0_init)
        check_number("norm_eps", norm_eps, 0, strict=True)
        self.d_model, self.gate, self.x0_norm, self.norm_eps = d_model, gate, x0_norm, float(norm_eps)
        self.resid_lambdas = nn.Parameter(torch.full((n_layers,), float(resid_init)))
        self.x0_lambdas = nn.Parameter(torch.full((n_layers,), float(x0_init)))
        if gate:  # row ℓ: w_ℓ; zero, so λ_0(t) starts at the static λ_0
            self.gate_weight = nn.Parameter(torch.zeros(n_layers, d_model))

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "EmbeddingShortcut":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, **options)

    @classmethod
    def preserving_options(cls, options):
        # λr = 1, λ0 = 0, w = 0 (the defaults) are the baseline; x0_norm would rescale the stream
        return fix_options("shortcut", options, {"x0_norm": False, "resid_init": 1.0, "x0_init": 0.0})

    @shapecheck
    def x0_weight(self, layer: int, x: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "#batch #seq 1"]:
        """``λ_0`` of block ``layer`` for its incoming stream ``x``: a scalar, per token with ``gate``."""
        check_layer(layer, self.n_layers)
        lam = self.x0_lambdas[layer].to(x.dtype).view(1, 1, 1)
        if not self.gate:
            return lam
        return lam + (rms_normalize(x, self.norm_eps) @ self.gate_weight[layer].to(x.dtype)).unsqueeze(-1)

    def _enter(self, layer: int, x: Tensor, x0: Tensor) -> BlockInput:
        return BlockInput(self.resid_lambdas[layer].to(x.dtype) * x + self.x0_weight(layer, x) * x0)

    def init_state(
        self, x0: Float[Tensor, "batch seq dim"], tokens=None
    ) -> tuple[BlockInput, Float[Tensor, "batch seq dim"]]:
        if self.x0_norm:
            x0 = rms_normalize(x0, self.norm_eps)
        return self._enter(0, x0, x0), x0

    def block_output(self, layer: int, y: Float[Tensor, "batch seq dim"], state: Tensor | None):
        check_layer(layer, self.n_layers)
        if state is None:
            raise ValueError("block_output needs x0 as its state (from init_state), got None")
        if layer == self.n_layers - 1:  # the final norm reads the last output unmixed
            return BlockInput(y), state
        return self._enter(layer + 1, y, state), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, gate={self.gate}, x0_norm={self.x0_norm}, "
                f"norm_eps={self.norm_eps}")
