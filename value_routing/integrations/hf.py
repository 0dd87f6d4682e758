r"""Run a value-routing strategy inside a Hugging Face ``transformers`` decoder, patched in place.

::

    from value_routing import apply_value_routing, load_value_routed

    model = AutoModelForCausalLM.from_pretrained("...")     # Llama, Mistral, Qwen2, Qwen3 or Phi-3
    apply_value_routing(model, "satformer")                 # same logits as before (preserve_function)
    model.save_pretrained("ckpt")                           # config.json records the routing
    model = load_value_routed("ckpt")                       # the one call that rebuilds it (hf_checkpoint)

The families (:data:`SUPPORTED_FAMILIES`) are recognised by their classes (the base model, its
decoder layers and their attention); anything else is refused with an error naming them. Nothing
here imports ``transformers`` until a model is loaded.

**How the protocol's hooks land on a Hugging Face model.** The model's own attention, MLP,
norms, rotary embedding, masks and cache stay; two forwards are replaced.

``init_state(x0, tokens)``
    in the base model's forward (wrapped): ``x0`` is the token embedding; the layers read ``inp.x``
    (handed to the original forward as ``inputs_embeds``).
``mix_value(layer, v, h, state)``
    in the attention, between the value projection and the KV cache: every supported attention
    hands its raw value states (RoPE-free) to ``cache.update(k, v, layer_idx)`` once, whether the
    projection is separate (Llama, Mistral, Qwen2 with its bias, Qwen3 with its q/k-norm) or fused
    (Phi-3's ``qkv_proj``). The patched layer passes the attention a :class:`ValueInlet` as its
    cache, which mixes ``v`` and hands the mixed values on to the real cache (or back to the
    attention when there is none): the cache holds the mixed values, as in
    :class:`~recipes.lm.model.CausalLM`. ``h`` is the layer's normed input, what the projection read.
``residual(layer, sublayer, x, out, state)``
    the decoder layer's two ``x + out`` (its forward is replaced by the generic pre-norm one,
    calling the layer's own modules; Phi-3's residual dropouts stay on ``out``).
``block_output(layer, y, state)``
    after each decoder layer; the last one's ``x`` feeds the model's final norm.

Strategies whose ``block_output`` hands blocks separate query/key/value inputs
(``separate_qkv_inputs``: MUDDFormer) are refused: a Hugging Face attention projects all three
from one tensor, and routing them apart would mean rewriting it.

**State.** The wrapped base forward creates one :class:`RoutingPass` per call and hands it to
its layers through the keyword arguments Hugging Face forwards to every layer; it carries the
strategy's state from one layer to the next (the loop variable of ``CausalLM``'s layer loop).
Inside a layer each hook takes and returns the state as arguments, and under gradient
checkpointing the layer (not ``block_output``) is recomputed from its entry state, as ``CausalLM``
does. Nothing is stored on a module between calls, so ``torch.compile`` and checkpointing see
pure functions.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from value_routing.strategies import STRATEGIES, BlockInput, ModelDims, Strategy, build_strategy
from value_routing.typing import Float, Tensor

#: The base model's attribute holding the strategy (its weights are saved under this name) and the
#: config attribute that records it: ``{"strategy": name, "options": {...}}``.
ROUTING_ATTR = "value_routing"
#: The keyword through which the base model's forward hands its layers the :class:`RoutingPass`.
PASS_KWARG = "value_routing_pass"


@dataclass(frozen=True)
class HFFamily:
    """A decoder family the adapter patches: the ``transformers`` module defining it, the prefix of
    its ``{prefix}Model`` / ``{prefix}DecoderLayer`` / ``{prefix}Attention`` classes, and the
    dropout modules its layers apply to the attention and MLP outputs before each residual."""

    name: str
    module: str
    prefix: str
    dropouts: tuple[str, str] | None = None

    def classes(self) -> tuple[type, type, type] | None:
        """The family's base model, decoder layer and attention classes, or ``None`` when its module
        was never imported (then no model of this family exists)."""
        module = sys.modules.get(self.module)
        if module is None:
            return None
        return tuple(getattr(module, self.prefix + part) for part in ("Model", "DecoderLayer", "Attention"))  # type: ignore[return-value]


#: The families :func:`apply_value_routing` patches.
SUPPORTED_FAMILIES: tuple[HFFamily, ...] = (
    HFFamily("Llama", "transformers.models.llama.modeling_llama", "Llama"),
    HFFamily("Mistral", "transformers.models.mistral.modeling_mistral", "Mistral"),
    HFFamily("Qwen2", "transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    HFFamily("Qwen3", "transformers.models.qwen3.modeling_qwen3", "Qwen3"),
    HFFamily("Phi-3", "transformers.models.phi3.modeling_phi3", "Phi3", ("resid_attn_dropout", "resid_mlp_dropout")),
)


@dataclass(frozen=True)
class LayerRoute:
    """What a patched decoder layer knows about its routing: its index and its family's dropouts."""

    index: int
    dropouts: tuple[str, str] | None = None


class RoutingPass:
    """One forward call's routing: the strategy and its state between layers (see module docstring)."""

    __slots__ = ("strategy", "state")

    def __init__(self, strategy: Strategy, state: Any) -> None:
        self.strategy, self.state = strategy, state


class ValueInlet:
    """The cache a patched layer hands its attention: :meth:`update` mixes the raw values through the
    strategy's ``mix_value`` and passes the mixed values to the real cache, if any. Made per call."""

    def __init__(self, strategy: Strategy, layer: int, h: Tensor, state: Any, cache: Any) -> None:
        self.strategy, self.layer, self.h, self.state, self.cache = strategy, layer, h, state, cache
        self.mixed = False

    def update(
        self, key_states: Tensor, value_states: Float[Tensor, "batch kv_heads seq head_dim"], layer_idx: int,
        *args: Any, **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        v, self.state = self.strategy.mix_value(self.layer, value_states.transpose(1, 2), self.h, self.state)
        self.mixed = True
        v = v.transpose(1, 2)
        if self.cache is None:
            return key_states, v
        return self.cache.update(key_states, v, layer_idx, *args, **kwargs)


def apply_value_routing(
    model: nn.Module, strategy: str | None = None, *, preserve_function: bool = True, **options: Any
) -> nn.Module:
    """Patch ``model`` (a supported ``PreTrainedModel``, its base model, or a PEFT wrapper of one)
    in place to run ``strategy`` (a name in :data:`~value_routing.STRATEGIES`) with ``options``;
    returns ``model``.

    ``preserve_function=True`` completes the options with the strategy's function-preserving start
    (:meth:`~value_routing.strategies.base.Strategy.preserving_options`: e.g. SATFormer's ``gate_scale=0``), so the
    patched model's logits equal the unpatched model's at initialisation. The strategy's module is
    the base model's ``value_routing`` (``model.model.value_routing``), in the model's dtype and
    device; ``config.value_routing`` records the name and the resolved options, so that
    ``save_pretrained`` keeps them. Without ``strategy`` the config's record is applied (what
    :func:`~value_routing.integrations.hf_checkpoint.load_value_routed` does).
    """
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap PEFT
    base = getattr(hf, "base_model", hf)
    family = _family_of(base)
    if hasattr(base, ROUTING_ATTR):
        raise ValueError(f"the model already runs value routing ({getattr(base, ROUTING_ATTR).__class__.__name__})")
    config = base.config
    if strategy is None:
        saved = getattr(config, ROUTING_ATTR, None)
        if not isinstance(saved, Mapping) or options:
            raise ValueError("strategy is required unless the model's config records one (config.value_routing) "
                             "and no options are given")
        strategy, options, preserve_function = saved["strategy"], dict(saved["options"]), False
    cls = STRATEGIES.lookup(strategy)
    if cls.separate_qkv_inputs:
        raise ValueError(f"strategy {strategy!r} routes separate query/key/value inputs (separate_qkv_inputs), "
                         "which a Hugging Face attention projects from one hidden state: not supported")
    if preserve_function:
        options = cls.preserving_options(options)
    n_layers = config.num_hidden_layers
    if len(base.layers) != n_layers:
        raise ValueError(f"the model has {len(base.layers)} layers, its config num_hidden_layers={n_layers}")
    dims = ModelDims(config.hidden_size, n_layers, config.num_attention_heads, config.num_key_value_heads,
                     base.layers[0].self_attn.head_dim)
    routing = build_strategy(strategy, dims, **options)
    weight = base.get_input_embeddings().weight
    routing.to(device=weight.device, dtype=weight.dtype)
    base.add_module(ROUTING_ATTR, routing)
    base.forward = types.MethodType(_base_forward, base)
    for i, layer in enumerate(base.layers):
        layer.value_routing_layer = LayerRoute(i, family.dropouts)
        layer.forward = types.MethodType(_layer_forward, layer)
    setattr(config, ROUTING_ATTR, {"strategy": strategy, "options": dict(options)})
    return model


def _family_of(base: nn.Module) -> HFFamily:
    for family in SUPPORTED_FAMILIES:
        classes = family.classes()
        if classes is None or type(base) is not classes[0]:
            continue
        for i, layer in enumerate(getattr(base, "layers", ())):
            if type(layer) is not classes[1] or type(getattr(layer, "self_attn", None)) is not classes[2]:
                raise ValueError(f"layer {i} of the {family.name} model is a {type(layer).__name__} with a "
                                 f"{type(getattr(layer, 'self_attn', None)).__name__}, not a {classes[1].__name__} "
                                 f"with a {classes[2].__name__}")
        return family
    names = ", ".join(f"{f.name} ({f.prefix}Model)" for f in SUPPORTED_FAMILIES)
    raise ValueError(f"apply_value_routing supports the Hugging Face families {names}; "
                     f"got a {type(base).__name__}")


def _single_input(inp: BlockInput, layer: int) -> None:
    if inp.q is not None or inp.k is not None or inp.v is not None:
        where = "init_state" if layer < 0 else f"block_output of layer {layer}"
        raise ValueError(f"the strategy's {where} returned separate query/key/value inputs, which a Hugging Face "
                         "attention cannot take")


def _base_forward(self: nn.Module, input_ids: Tensor | None = None, *args: Any,
                  inputs_embeds: Tensor | None = None, **kwargs: Any) -> Any:
    """The base model's forward, starting the strategy on the embedding (see module docstring)."""
    if args:
        raise TypeError("a value-routed model takes input_ids positionally and every other argument by keyword")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.get_input_embeddings()(input_ids)
    strategy = getattr(self, ROUTING_ATTR)
    inp, state = strategy.init_state(inputs_embeds, input_ids)
    _single_input(inp, -1)
    kwargs[PASS_KWARG] = RoutingPass(strategy, state)
    return type(self).forward(self, inputs_embeds=inp.x, **kwargs)


def _layer_forward(self: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """A decoder layer's forward: :func:`_block` (checkpointed when enabled), then ``block_output``."""
    route: RoutingPass | None = kwargs.pop(PASS_KWARG, None)
    if args or route is None:
        raise TypeError("a value-routed decoder layer runs inside its base model's forward, which passes "
                        "hidden_states positionally and the routing by keyword")
    spec: LayerRoute = self.value_routing_layer
    cache = kwargs.pop("cache", None)
    if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
        if getattr(self._gradient_checkpointing_func, "keywords", {}).get("use_reentrant"):
            # reentrant checkpointing drops the gradients of tensors nested in the state (HC's streams)
            raise ValueError("a value-routed layer passes the strategy's state through the checkpoint: enable "
                             "gradient checkpointing with use_reentrant=False (the default)")
        # as Hugging Face's own layers: a checkpointed layer writes no cache (the replay would write twice)
        kwargs["use_cache"] = False
        block = partial(_block, self, route.strategy, spec, **kwargs)
        y, state = self._gradient_checkpointing_func(block, hidden_states, route.state)
    else:
        y, state = _block(self, route.strategy, spec, hidden_states, route.state, cache, **kwargs)
    inp, route.state = route.strategy.block_output(spec.index, y, state)
    _single_input(inp, spec.index)
    return inp.x


def _block(layer: nn.Module, strategy: Strategy, spec: LayerRoute, x: Tensor, state: Any, cache: Any = None,
           **kwargs: Any) -> tuple[Tensor, Any]:
    """The pre-norm decoder layer with the strategy's hooks, from the layer's own modules."""
    h = layer.input_layernorm(x)
    inlet = ValueInlet(strategy, spec.index, h, state, cache)
    out, _ = layer.self_attn(hidden_states=h, cache=inlet, **kwargs)
    if not inlet.mixed:
        raise RuntimeError(f"the attention of layer {spec.index} did not hand its values to its cache")
    if spec.dropouts is not None:
        out = getattr(layer, spec.dropouts[0])(out)
    x, state = strategy.residual(spec.index, 0, x, out, inlet.state)
    out = layer.mlp(layer.post_attention_layernorm(x))
    if spec.dropouts is not None:
        out = getattr(layer, spec.dropouts[1])(out)
    return strategy.residual(spec.index, 1, x, out, state)


def routing_of(model: nn.Module) -> Strategy:
    """The strategy module of a patched model (a ValueError if ``model`` is not patched)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    routing = getattr(getattr(hf, "base_model", hf), ROUTING_ATTR, None)
    if not isinstance(routing, Strategy):
        raise ValueError(f"{type(model).__name__} runs no value routing: call apply_value_routing first")
    return routing
