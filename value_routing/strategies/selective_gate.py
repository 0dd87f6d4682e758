r"""SelectiveGate (SATFormer): a per-token, per-head learned gate on layer 0's values.

For every gated layer :math:`n`

.. math:: V'_n = V_n + \mathrm{act}(W_{\alpha,n} h_n) \odot V_1

where :math:`h_n` is the normed block input (``batch seq d_model``),
:math:`W_{\alpha,n}\in\mathbb{R}^{d_\text{model}\to n_\text{kv}}` has no bias (with ``bias_init``
a learned bias :math:`b_n`, initialised to that value, is added: :math:`\mathrm{act}(W_{\alpha,n} h_n + b_n)`;
the authors' public code has this as ``proj_bias``), so the gate
:math:`\alpha_n` has shape ``batch seq kv_heads`` and broadcasts over ``head_dim``;
:math:`V_1` is layer 0's raw value projection (not detached, so gradients reach layer 0).
``act`` is one of ``relu`` (default; exact zeros switch reuse off), ``sigmoid``, ``tanh``,
``identity``, ``softmax`` (over heads, ×heads) or ``softmax_sigmoid``. With ``last_k`` only
the last ``k`` layers are gated; the rest run as the baseline. A relu gate starts nearly closed
(:math:`W_\alpha` is small at init); ``bias_init=0.5`` starts it half open, as the static residual's
:math:`\lambda_1 = 0.5`.

With ``gate_scale`` a learned per-head scale :math:`s_n \in \mathbb{R}^{n_\text{kv}}`, initialised to
that value, multiplies the gate: :math:`V'_n = V_n + (s_n \odot \mathrm{act}(W_{\alpha,n} h_n)) \odot V_1`.
``gate_scale=0`` is the function-preserving start (:meth:`~value_routing.strategies.base.Strategy.preserving_options`):
exactly :math:`V'_n = V_n`, and the gate still learns, unlike a zero :math:`W_\alpha` under relu
(:math:`\mathrm{relu}'(0) = 0` would keep it shut): :math:`s_n` gets its gradient on the first step,
:math:`W_\alpha` from the second (its gradient is :math:`\propto s_n`). No exactly-closed relu gate can
give :math:`W_\alpha` a first-step gradient: closed means :math:`W_\alpha h \le 0` on every token,
where relu's derivative is 0, and any zero factor multiplying the gate zeroes the others' gradients.

The mix happens before attention and before the KV cache, so incremental decoding needs
only the new tokens' :math:`V_1`. With ``fuse_projection=True`` the strategy offers
:math:`W_{\alpha,n}` to the model's QKV GEMM (``value_projection``): one GEMM then yields q, k,
v and the gate logits (exact; a model that does not fuse still gets the same result).

Use in your own attention (the state is :math:`V_1`, stored by layer 0)::

    gate = SelectiveGate(d_model=512, n_layers=8, n_kv_heads=4)
    v, v1 = gate.mix_value(layer, v, h, v1)   # v, v1: (batch, seq, kv_heads, head_dim)
"""

from __future__ import annotations

import torch
from torch import nn

from value_routing.kernels.gate_mix import check_activation, gate_activation, gate_mix
from value_routing.strategies.base import STRATEGIES, ModelDims, ValueResidual, check_layer, fix_options
from value_routing.strategies.checks import check_int, check_number
from value_routing.typing import Float, Tensor, shapecheck


@STRATEGIES.register("satformer")
class SelectiveGate(ValueResidual):
    """SATFormer selective value gate (see module docstring for the equation)."""

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_kv_heads: int,
        act: str = "relu",
        last_k: int | None = None,
        init_std: float = 0.02,
        bias_init: float | None = None,
        fuse_projection: bool = False,
        gate_scale: float | None = None,
    ) -> None:
        super().__init__(n_layers)
        self.act = check_activation(act)
        check_int("d_model", d_model, 1)
        check_int("n_kv_heads", n_kv_heads, 1)
        check_number("init_std", init_std, 0)
        if last_k is not None and not 1 <= last_k <= n_layers - 1:
            raise ValueError(
                f"last_k must be None or in [1, n_layers - 1] = [1, {n_layers - 1}], got {last_k}"
            )
        check_number("bias_init", bias_init, optional=True)
        check_number("gate_scale", gate_scale, optional=True)
        if not isinstance(fuse_projection, bool):
            raise ValueError(f"fuse_projection must be True or False, got {fuse_projection!r}")
        self.d_model, self.n_kv_heads, self.last_k, self.bias_init = d_model, n_kv_heads, last_k, bias_init
        self.fuse_projection = fuse_projection
        self.first_gated = 1 if last_k is None else n_layers - last_k
        self.gates = nn.ModuleList(
            nn.Linear(d_model, n_kv_heads, bias=bias_init is not None) for _ in range(self.first_gated, n_layers)
        )
        for gate in self.gates:
            nn.init.normal_(gate.weight, std=init_std)
            if gate.bias is not None:
                nn.init.constant_(gate.bias, bias_init)
        self.gate_scale = gate_scale
        self.gate_scales = None if gate_scale is None else nn.ParameterList(
            nn.Parameter(torch.full((n_kv_heads,), float(gate_scale))) for _ in self.gates
        )

    @classmethod
    def preserving_options(cls, options):
        return fix_options("satformer", options, {"gate_scale": 0.0})

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "SelectiveGate":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, n_kv_heads=dims.n_kv_heads, **options)

    def is_gated(self, layer: int) -> bool:
        """Whether ``layer`` mixes in ``V1``."""
        return layer >= self.first_gated

    def gate_weight(self, layer: int) -> Float[Tensor, "kv_heads d_model"] | None:
        """``W_α`` of ``layer``, or ``None`` for an ungated layer."""
        check_layer(layer, self.n_layers)
        return self.gates[layer - self.first_gated].weight if self.is_gated(layer) else None

    def value_projection(self, layer: int) -> Float[Tensor, "kv_heads d_model"] | None:
        """``W_α`` for the model's QKV GEMM when ``fuse_projection`` (``mix_value`` then gets
        ``logits`` and adds the bias, if any); ``None`` otherwise."""
        weight = self.gate_weight(layer)
        return weight if self.fuse_projection else None

    @shapecheck
    def gate(self, layer: int, h: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch seq kv_heads"]:
        """The gate values ``α = act(W_α h)`` of a gated layer (``s ⊙ act(W_α h)`` with ``gate_scale``)."""
        check_layer(layer, self.n_layers)
        if not self.is_gated(layer):
            raise ValueError(f"layer {layer} is not gated (gated layers: {self.first_gated}..{self.n_layers - 1})")
        return self._scaled(layer, gate_activation(self.gates[layer - self.first_gated](h), self.act))

    def _scaled(self, layer: int, alpha: Tensor) -> Tensor:
        if self.gate_scales is None:
            return alpha
        return self.gate_scales[layer - self.first_gated].to(alpha.dtype) * alpha

    def mix_v1(self, layer, v, v1, h, logits=None):
        """``V + act(W_α h)·V1`` for gated layers; ``v`` unchanged otherwise.

        ``logits`` may pass precomputed ``W_α h`` (e.g. from a fused QKV+gate projection); the
        gate's bias, if any, is added here.
        """
        if not self.is_gated(layer):
            return v
        proj = self.gates[layer - self.first_gated]
        if logits is None:
            logits = proj(h)
        elif proj.bias is not None:
            logits = logits + proj.bias
        if self.gate_scales is None:
            return gate_mix(v, v1, logits, self.act)
        # the scale acts after the activation: mix the (small, per-head) scaled gate as is
        return gate_mix(v, v1, self._scaled(layer, gate_activation(logits, self.act)), "identity")

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_layers={self.n_layers}, n_kv_heads={self.n_kv_heads}, "
            f"act={self.act!r}, last_k={self.last_k}, bias_init={self.bias_init}, fuse_projection={self.fuse_projection}, "
            f"gate_scale={self.gate_scale}"
        )
