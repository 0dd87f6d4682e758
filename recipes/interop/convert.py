"""Llama-family Hugging Face checkpoints to and from :class:`~recipes.lm.model.CausalLM`.

::

    from recipes.interop.convert import from_hf, to_hf
    hf = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
    model = from_hf(hf)                                      # the same function in our layout
    gated = from_hf(hf, strategy="satformer", act="sigmoid")  # the same weights + a reuse strategy
    back = to_hf(model)                                      # Qwen2ForCausalLM, the same weights again

The families are the pre-norm RMSNorm / RoPE / SwiGLU decoders whose every weight has a place
in ``CausalLM``, found by the model's class (exactly; a subclass may compute something else):

``LlamaForCausalLM``
    without attention or MLP bias;
``MistralForCausalLM``
    a sliding window caps ``max_seq_len`` (exact for every sequence that fits in it);
``Qwen2ForCausalLM``
    q/k/v bias (``ModelConfig.qkv_bias``); sliding-window layers as for Mistral;
``Qwen3ForCausalLM``
    per-head q/k RMSNorm before RoPE (``qk_norm``), an explicit ``head_dim``.

Anything else a config asks for (RoPE scaling such as Llama 3.1's ``rope_type="llama3"``, an
activation other than SiLU, attention or MLP biases elsewhere, attention dropout) is refused with
a ValueError naming the field and the values supported. Weights map one to one, except that our
attention fuses ``q_proj``, ``k_proj``, ``v_proj`` into ``wqkv`` (rows in that order) and our
SwiGLU fuses ``gate_proj``, ``up_proj`` into ``w13`` (gate first: ``silu(gate) * up``). Both
layouts rotate channel pairs ``(i, i + head_dim / 2)`` (``rotate_half``), so no permutation is
needed. The weights are copied, never shared.

These are functions, not ``CausalLM`` methods, so that ``recipes.lm`` stays free of the optional
``transformers`` dependency and imports keep pointing down the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

try:
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PretrainedConfig,
                              PreTrainedModel, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("recipes.interop.convert needs transformers: pip install 'value_routing[hf]'") from err

from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM
from value_routing.strategies import build_strategy


@dataclass(frozen=True)
class Family:
    """A supported Hugging Face architecture and the ``ModelConfig`` options it fixes."""

    model_class: type[PreTrainedModel]
    config_class: type[PretrainedConfig]
    qkv_bias: bool = False
    qk_norm: bool = False


FAMILIES = (
    Family(LlamaForCausalLM, LlamaConfig),
    Family(MistralForCausalLM, MistralConfig),
    Family(Qwen2ForCausalLM, Qwen2Config, qkv_bias=True),
    Family(Qwen3ForCausalLM, Qwen3Config, qk_norm=True),
)
_SUPPORTED = ", ".join(f.model_class.__name__ for f in FAMILIES)


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a Hugging Face model (its exact class), or a ValueError listing them."""
    for family in FAMILIES:
        if type(model) is family.model_class:
            return family
    raise ValueError(f"cannot convert a {type(model).__name__}: supported classes are {_SUPPORTED}")


def _refuse(config: PretrainedConfig, name: str, value: Any, supported: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name}={value!r} is not supported by CausalLM; supported: {supported}")


def _window(config: PretrainedConfig) -> int | None:
    """The sliding-window length HF applies to some layer, or ``None`` when every layer attends fully."""
    layer_types = getattr(config, "layer_types", None) or ()
    for kind in layer_types:
        if kind not in ("full_attention", "sliding_attention"):
            _refuse(config, "layer_types", kind, "'full_attention' or 'sliding_attention'")
    if isinstance(config, MistralConfig) or "sliding_attention" in layer_types:
        return getattr(config, "sliding_window", None)
    return None


def config_from_hf(config: PretrainedConfig, family: Family, strategy: str = "baseline",
                   max_seq_len: int | None = None, **options: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face config, refusing what ``CausalLM`` cannot express.

    ``max_seq_len`` defaults to ``max_position_embeddings``, capped at the sliding window where
    the config has one (up to the window, sliding and full causal attention agree); a larger
    value is refused.
    """
    if getattr(config, "is_heterogeneous", False):  # transformers >= 5.2: per-layer overrides
        _refuse(config, "per_layer_config", f"<overrides of {sorted(config.per_layer_attributes)}>",
                "none (every layer alike)")
    if config.hidden_act != "silu":
        _refuse(config, "hidden_act", config.hidden_act, "'silu'")
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        _refuse(config, "rope_parameters['rope_type']", rope["rope_type"], "'default' (no RoPE scaling)")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(config, name, False):
            _refuse(config, name, True, "False")
    if getattr(config, "attention_dropout", 0.0):
        _refuse(config, "attention_dropout", config.attention_dropout, "0.0")
    window = _window(config)
    limit = config.max_position_embeddings if window is None else min(window, config.max_position_embeddings)
    if max_seq_len is not None and window is not None and max_seq_len > window:
        _refuse(config, "sliding_window", window, f"None, or a window >= max_seq_len ({max_seq_len})")
    eps = float(config.rms_norm_eps)
    return ModelConfig(
        vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        d_ff=config.intermediate_size, max_seq_len=limit if max_seq_len is None else max_seq_len,
        rope_theta=float(rope["rope_theta"]), qk_norm=family.qk_norm, norm_eps=eps,
        qk_norm_eps=eps if family.qk_norm else None, tie_embeddings=bool(config.tie_word_embeddings),
        init_std=float(config.initializer_range), qkv_bias=family.qkv_bias,
        strategy=strategy, strategy_options=options,
    )


def _layer_names(cfg: ModelConfig, i: int) -> list[tuple[str, tuple[str, ...]]]:
    """``(our name, HF names concatenated along rows)`` of layer ``i``'s tensors."""
    hf, ours = f"model.layers.{i}.", f"blocks.{i}."
    attn = hf + "self_attn."
    names = [
        (ours + "attn_norm.weight", (hf + "input_layernorm.weight",)),
        (ours + "attn.wqkv.weight", tuple(attn + f"{p}_proj.weight" for p in "qkv")),
        (ours + "attn.wo.weight", (attn + "o_proj.weight",)),
        (ours + "ffn_norm.weight", (hf + "post_attention_layernorm.weight",)),
        (ours + "ffn.w13.weight", (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight")),
        (ours + "ffn.w2.weight", (hf + "mlp.down_proj.weight",)),
    ]
    if cfg.qkv_bias:
        names.append((ours + "attn.wqkv.bias", tuple(attn + f"{p}_proj.bias" for p in "qkv")))
    if cfg.qk_norm:
        names += [(ours + "attn.q_norm.weight", (attn + "q_norm.weight",)),
                  (ours + "attn.k_norm.weight", (attn + "k_norm.weight",))]
    return names


def weight_names(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    """Every ``(our name, HF names)`` pair: ours is the HF tensors concatenated along dim 0."""
    names = [("embed.weight", ("model.embed_tokens.weight",)), ("norm.weight", ("model.norm.weight",))]
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", ("lm_head.weight",)))
    return names + [pair for i in range(cfg.n_layers) for pair in _layer_names(cfg, i)]


def hf_to_ours(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict (new tensors) from a Hugging Face one."""
    return {ours: torch.cat([state[name] for name in theirs]) for ours, theirs in weight_names(cfg)}


def ours_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict (new tensors) from ours: each fused tensor split back by rows."""
    q, kv, d_ff = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    rows = {3: (q, kv, kv), 2: (d_ff, d_ff), 1: None}
    out = {}
    for ours, theirs in weight_names(cfg):
        parts = (state[ours],) if len(theirs) == 1 else state[ours].split(rows[len(theirs)])
        out.update({name: part.clone() for name, part in zip(theirs, parts)})
    return out


@torch.no_grad()
def from_hf(model: PreTrainedModel, strategy: str = "baseline", *, max_seq_len: int | None = None,
            **options: Any) -> CausalLM:
    """A :class:`CausalLM` computing what ``model`` computes, on its device and in its dtype.

    With another ``strategy`` (and its ``options``) the converted weights run that strategy; its
    own parameters are initialised as the strategy initialises them, and blocks that want separate
    q/k/v input norms (``Strategy.separate_qkv_norms``) get copies of the pretrained input norm.
    """
    family = family_of(model)
    cfg = config_from_hf(model.config, family, strategy, max_seq_len, **options)
    weight = model.get_input_embeddings().weight
    # built first, on its device, so that the seed alone decides its initialisation
    fresh = build_strategy(cfg.strategy, cfg.dims, **cfg.strategy_options).to(weight.device, weight.dtype)
    with torch.device("meta"):
        ours = CausalLM(cfg).to(weight.dtype)
    ours = ours.to_empty(device=weight.device)
    ours.reset_rope()
    result = ours.load_state_dict(hf_to_ours(model.state_dict(), cfg), strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"from_hf mapped weights CausalLM does not have: {result.unexpected_keys}")
    missing = set(result.missing_keys)
    params = dict(ours.named_parameters())
    for name in sorted(n for n in missing if n.endswith((".attn_norm_k.weight", ".attn_norm_v.weight"))):
        params[name].copy_(params[name.rsplit(".", 2)[0] + ".attn_norm.weight"])
        missing.discard(name)
    ours.strategy = fresh
    missing = {n for n in missing if not n.startswith("strategy.")}
    if missing:  # a block grew a tensor this converter does not know
        raise RuntimeError(f"from_hf left parameters uninitialised: {sorted(missing)}")
    return ours.train(model.training)


def _check_convertible(cfg: ModelConfig, family: Family) -> None:
    if cfg.strategy != "baseline":
        raise ValueError(f"to_hf converts the baseline only: strategy {cfg.strategy!r} routes values or residuals "
                         "in a way no Hugging Face Llama-family model does")
    for name, value in (("block", "transformer"), ("layernorm_scaling", False), ("peri_norm", False),
                        ("ffn_realloc", False)):
        if getattr(cfg, name) != value:
            raise ValueError(f"to_hf needs ModelConfig.{name}={value!r}, got {getattr(cfg, name)!r}")
    for name in ("qkv_bias", "qk_norm"):
        if getattr(cfg, name) != getattr(family, name):
            owner = next((f.config_class.__name__ for f in FAMILIES if getattr(f, name)), "")
            raise ValueError(f"{family.config_class.__name__} needs ModelConfig.{name}={getattr(family, name)}, got "
                             f"{getattr(cfg, name)} (the family with {name}=True is {owner}; none has both)")
    if cfg.qk_norm and cfg.qk_norm_eps != cfg.norm_eps:
        raise ValueError(f"to_hf needs qk_norm_eps == norm_eps (HF uses rms_norm_eps for both), got "
                         f"{cfg.qk_norm_eps} and {cfg.norm_eps}")
    if family.config_class is LlamaConfig and cfg.d_model % cfg.n_heads:
        raise ValueError(f"LlamaConfig needs d_model ({cfg.d_model}) divisible by n_heads ({cfg.n_heads}); "
                         "pass family=MistralConfig")


def default_family(cfg: ModelConfig) -> type[PretrainedConfig]:
    """Qwen3 for q/k-norm, Qwen2 for q/k/v bias, else Llama."""
    return Qwen3Config if cfg.qk_norm else Qwen2Config if cfg.qkv_bias else LlamaConfig


def config_to_hf(cfg: ModelConfig, family: type[PretrainedConfig] | None = None, **overrides: Any) -> PretrainedConfig:
    """The Hugging Face config of ``cfg`` in ``family`` (a config class; default :func:`default_family`)."""
    family = default_family(cfg) if family is None else family
    fam = next((f for f in FAMILIES if f.config_class is family), None)
    if fam is None:
        raise ValueError(f"family must be one of {[f.config_class.__name__ for f in FAMILIES]}, got {family!r}")
    _check_convertible(cfg, fam)
    fields: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        initializer_range=cfg.init_std, hidden_act="silu",
    )
    if family is MistralConfig:
        fields["sliding_window"] = None
    return family(**{**fields, **overrides})


@torch.no_grad()
def to_hf(model: CausalLM, family: type[PretrainedConfig] | None = None, **config: Any) -> PreTrainedModel:
    """The Hugging Face model computing what a baseline ``model`` computes (same device and dtype).

    ``family`` picks the config class (:func:`default_family` when ``None``: any family holding
    the model's options); ``config`` sets further fields of it (e.g. ``bos_token_id``).
    """
    hf_cfg = config_to_hf(model.cfg, family, **config)
    weight = model.embed.weight
    cls = next(f.model_class for f in FAMILIES if f.config_class is type(hf_cfg))
    with torch.device("meta"):
        hf = cls(hf_cfg)
    state = ours_to_hf(model.state_dict(), model.cfg)
    if model.cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf_cfg).to(weight.device)  # its buffers are not in the state
    hf.config.dtype = weight.dtype
    left = [n for n, t in (*hf.named_parameters(), *hf.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"to_hf left tensors on the meta device: {left}")
    return hf.train(model.training)


__all__ = ["FAMILIES", "Family", "config_from_hf", "config_to_hf", "default_family", "family_of", "from_hf",
           "hf_to_ours", "ours_to_hf", "to_hf", "weight_names"]
