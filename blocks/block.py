"""The pre-norm Transformer block that runs any reuse strategy, and the registry of blocks.

A block is built from a :class:`BlockSpec` by a factory registered in :data:`BLOCKS` (the model
names it with ``ModelConfig.block``) and honours a three-part contract:

``forward(inp, strategy, state, ctx, cache=None) -> (y, state)``
    reads a :class:`~value_routing.BlockInput`, calls the strategy's ``mix_value`` on its value
    projection and ``residual`` to join each sublayer (see :mod:`value_routing.strategies.base`),
    attends with the shared :class:`~blocks.attention.AttentionContext` and writes its keys and
    values into ``cache`` (a :class:`~blocks.attention.LayerCache` of
    ``(batch, max_len, n_kv_heads, head_dim)``) when given;
``reset_parameters(std, out_std)``
    initialises its weights (``out_std`` for the projections that write into the residual stream);
``layer``
    its index, which it passes to the strategy's hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from blocks.attention import AttentionContext, CausalSelfAttention, LayerCache
from blocks.layers import RMSNorm, SwiGLU
from value_routing.registry import Registry
from value_routing.strategies.base import BlockInput, Strategy
from value_routing.typing import Float, Tensor


@dataclass(frozen=True)
class BlockSpec:
    """What a block factory needs to build block ``layer``: widths, norms, and whether the strategy
    wants separate query/key/value input norms (``Strategy.separate_qkv_norms``). ``norm_scale``
    multiplies every pre-norm output (LayerNorm Scaling's ``1/√ℓ``); ``peri_norm`` adds a learned
    norm on each sublayer's output before the residual (Peri-LN / sandwich norm). ``head_dim``
    (``None``: ``d_model // n_heads``) and ``qkv_bias`` shape the attention
    (:class:`~blocks.attention.CausalSelfAttention`)."""

    layer: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    qk_norm: bool = False
    norm_eps: float = 1e-6
    qk_norm_eps: float = 1e-6
    separate_qkv_norms: bool = False
    norm_scale: float = 1.0
    peri_norm: bool = False
    head_dim: int | None = None
    qkv_bias: bool = False

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)


#: Block factories by name (``ModelConfig.block``): ``factory(spec: BlockSpec) -> nn.Module``.
BLOCKS: Registry[Callable[[BlockSpec], nn.Module]] = Registry("block", "block")


@BLOCKS.register("transformer")
class TransformerBlock(nn.Module):
    """``a = x + Attn(norm(q), norm(k), norm(v)); y = a + SwiGLU(norm(a))``.

    With ``spec.norm_scale = s`` every ``norm(·)`` above is ``s · norm(·)``; with ``spec.peri_norm``
    each sublayer output is normed once more before the residual: ``x + norm'(Attn(...))``,
    ``a + norm''(SwiGLU(...))`` (own learned scales, initialised to 1).

    ``q``, ``k`` and ``v`` are the residual input unless the strategy supplies its own (as
    MUDDFormer does); with ``separate_qkv_norms`` each gets its own learned norm (the MUDDFormer
    authors' form), else one norm serves all three. The raw value projection passes through the
    strategy's ``mix_value`` before attention; both ``+`` are the strategy's ``residual`` hook.
    When the strategy offers a ``value_projection`` (SATFormer's fused gate), it joins the QKV GEMM
    and its output reaches ``mix_value`` as ``logits``.
    """

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.layer = spec.layer
        self.attn_norm = RMSNorm(spec.d_model, spec.norm_eps)
        self.attn_norm_k = RMSNorm(spec.d_model, spec.norm_eps) if spec.separate_qkv_norms else None
        self.attn_norm_v = RMSNorm(spec.d_model, spec.norm_eps) if spec.separate_qkv_norms else None
        self.attn = CausalSelfAttention(spec.d_model, spec.n_heads, spec.n_kv_heads, spec.qk_norm, spec.qk_norm_eps,
                                        head_dim=spec.head_dim, qkv_bias=spec.qkv_bias)
        self.ffn_norm = RMSNorm(spec.d_model, spec.norm_eps)
        self.ffn = SwiGLU(spec.d_model, spec.d_ff)
        self.norm_scale = spec.norm_scale
        self.attn_out_norm = RMSNorm(spec.d_model, spec.norm_eps) if spec.peri_norm else None
        self.ffn_out_norm = RMSNorm(spec.d_model, spec.norm_eps) if spec.peri_norm else None

    def _pre(self, norm: RMSNorm, x: Tensor) -> Tensor:
        return norm(x) if self.norm_scale == 1.0 else norm(x) * self.norm_scale

    @staticmethod
    def _post(norm: RMSNorm | None, out: Tensor) -> Tensor:
        return out if norm is None else norm(out)

    def _normed_inputs(self, inp: BlockInput) -> tuple[Tensor, Tensor, Tensor]:
        norm = self.attn_norm
        h = self._pre(norm, inp.x if inp.q is None else inp.q)
        if self.attn_norm_k is None or self.attn_norm_v is None:
            return h, h if inp.k is None else self._pre(norm, inp.k), h if inp.v is None else self._pre(norm, inp.v)
        return (h, self._pre(self.attn_norm_k, inp.x if inp.k is None else inp.k),
                self._pre(self.attn_norm_v, inp.x if inp.v is None else inp.v))

    def forward(
        self, inp: BlockInput, strategy: Strategy, state: Any, ctx: AttentionContext, cache: LayerCache | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], Any]:
        hq, hk, hv = self._normed_inputs(inp)
        q, k, v, logits = self.attn.project(hq, hk, hv, strategy.value_projection(self.layer))
        v, state = strategy.mix_value(self.layer, v, hv, state, logits=logits)
        attn = self._post(self.attn_out_norm, self.attn.attend(q, k, v, ctx, cache))
        a, state = strategy.residual(self.layer, 0, inp.x, attn, state)
        return strategy.residual(self.layer, 1, a, self._post(self.ffn_out_norm, self.ffn(self._pre(self.ffn_norm, a))), state)

    def reset_parameters(self, std: float, out_std: float) -> None:
        """N(0, ``std``) for the input projections, N(0, ``out_std``) for the two that write into the stream."""
        self.attn.reset_parameters(std, out_std)
        self.ffn.reset_parameters(std, out_std)
