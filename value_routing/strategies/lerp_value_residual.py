r"""LerpValueResidual: a learned per-token, per-head convex mix of a layer's values and layer 0's.

For every layer :math:`n \ge 1` (code numbering; layer 0 is the source of :math:`V_1` and is
never mixed)

.. math::

    \mu_n = \sigma(W_n h_n + b_n), \qquad
    V'_n = \mathrm{lerp}(V_1, V_n, \mu_n) = \mu_n \odot V_n + (1 - \mu_n) \odot V_1

where :math:`h_n` is the normed block input (``batch seq d_model``),
:math:`W_n \in \mathbb{R}^{n_\text{kv} \times d_\text{model}}` with bias :math:`b_n`, so
:math:`\mu_n` has shape ``batch seq kv_heads`` and broadcasts over ``head_dim``; :math:`V_1` is
layer 0's raw value projection (not detached). The sigmoid weights the layer's *own* values:
:math:`\mu \to 1` is the baseline, :math:`\mu \to 0` replaces them by :math:`V_1`.

This is the value residual of lucidrains' x-transformers with ``add_value_residual=True`` and
``learned_value_residual_mix=True`` (its default once value residuals are on): its
``Attention`` maps its (pre-normed) input through ``nn.Linear(dim, heads)`` and a sigmoid and
takes ``value_residual.lerp(v, mix)``, the raw ``to_v`` values of the first self-attention layer
being the residual; the first layer gets no mix. Its gate has one output per *query* head, which
broadcasts against values of ``kv_heads`` heads only when ``kv_heads`` is ``heads`` or 1 (see the
strategies guide); ours has one per key/value head, the same thing when ``n_kv_heads == n_heads``.

Initialisation (``init_std``, ``bias_init``): ``None`` keeps ``nn.Linear``'s default
(:math:`W, b \sim \mathcal{U}(-1/\sqrt{d}, 1/\sqrt{d})`), as x-transformers does, so the gate starts
near :math:`\sigma(0) = 0.5`: ResFormer's fixed half-and-half mix. A number draws :math:`W` from
:math:`\mathcal{N}(0, \text{init\_std}^2)` or sets :math:`b` to that constant (``bias_init=4``
starts near the baseline, :math:`\mu \approx 0.98`).

Use in your own attention (the state is :math:`V_1`, stored by layer 0)::

    mix = LerpValueResidual(d_model=512, n_layers=8, n_kv_heads=4)
    v, v1 = mix.mix_value(layer, v, h, v1)   # v, v1: (batch, seq, kv_heads, head_dim)
"""

from __future__ import annotations

import torch
from torch import nn

from value_routing.strategies.base import STRATEGIES, ModelDims, ValueResidual, check_layer
from value_routing.typing import Float, Tensor, shapecheck

FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_number(name: str, value: object, minimum: float | None = None) -> None:
    """A ValueError naming ``name`` unless ``value`` is ``None`` or a number that float32 holds (``>= minimum``)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= FLOAT32_MAX:
        raise ValueError(f"{name} must be None or a finite float32 number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be None or >= {minimum}, got {value!r}")


@STRATEGIES.register("lerp")
class LerpValueResidual(ValueResidual):
    """x-transformers' learned value-residual mix (see module docstring for the equation)."""

    def __init__(
        self, d_model: int, n_layers: int, n_kv_heads: int, init_std: float | None = None,
        bias_init: float | None = None,
    ) -> None:
        super().__init__(n_layers)
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if n_kv_heads < 1:
            raise ValueError(f"n_kv_heads must be >= 1, got {n_kv_heads}")
        _check_number("init_std", init_std, minimum=0.0)
        _check_number("bias_init", bias_init)
        self.d_model, self.n_kv_heads, self.init_std, self.bias_init = d_model, n_kv_heads, init_std, bias_init
        # one gate per layer 1..L-1 (index layer - 1); nn.Linear's own init unless told otherwise
        self.gates = nn.ModuleList(nn.Linear(d_model, n_kv_heads) for _ in range(n_layers - 1))
        for gate in self.gates:
            if init_std is not None:
                nn.init.normal_(gate.weight, std=init_std)
            if bias_init is not None:
                nn.init.constant_(gate.bias, bias_init)

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "LerpValueResidual":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, n_kv_heads=dims.n_kv_heads, **options)

    @shapecheck
    def mix(self, layer: int, h: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch seq kv_heads"]:
        """The weight ``μ = σ(W h + b)`` of layer ``layer``'s own values (``layer >= 1``)."""
        check_layer(layer, self.n_layers)
        if layer == 0:
            raise ValueError("layer 0 is the source of V1 and has no mix: layer must be >= 1")
        return torch.sigmoid(self.gates[layer - 1](h))

    def mix_v1(self, layer, v, v1, h, logits=None):
        """``lerp(V1, V, μ) = μ·V + (1 − μ)·V1``."""
        # lerp's backward needs v (dμ ∝ v − V1): save a copy, not the QKV output v is a slice of
        return torch.lerp(v1, v.contiguous(), self.mix(layer, h).unsqueeze(-1))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, n_kv_heads={self.n_kv_heads}, "
                f"init_std={self.init_std}, bias_init={self.bias_init}")
