"""Hugging Face ``transformers`` interop: config and model wrappers, Auto* registration.

:class:`ValueRoutingConfig` is a ``PretrainedConfig`` carrying every field of
:class:`recipes.lm.config.ModelConfig` (``strategy`` and ``strategy_options`` included);
:class:`ValueRoutingForCausalLM` wraps :class:`recipes.lm.model.CausalLM` so that ``save_pretrained`` /
``from_pretrained`` (safetensors), ``AutoModelForCausalLM`` and ``generate()`` work. Importing
this module registers both under ``model_type = "value_routing"``::

    from recipes.interop.hf import ValueRoutingForCausalLM
    hf = ValueRoutingForCausalLM.from_causal_lm(model)     # shares model's weights
    hf.save_pretrained("ckpt")
    hf = AutoModelForCausalLM.from_pretrained("ckpt")
    out = hf.generate(prompt, max_new_tokens=32, do_sample=False)

``generate`` decodes with our preallocated :class:`~recipes.lm.model.KVCache` passed as
``past_key_values`` (a :class:`ValueRoutingCache`, grown by doubling). Prompts of different lengths
batch with padding as usual (``tokenizer(..., padding=True)`` gives ``attention_mask``; left
padding is the ``generate`` convention, right padding works too): every row continues as it
would alone. Needs the optional extra ``pip install 'value_routing[hf]'``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

try:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("recipes.interop.hf needs transformers: pip install 'value_routing[hf]'") from err

from blocks import LayerCache
from recipes.lm.config import ModelConfig
from recipes.lm.model import CausalLM, KVCache

MODEL_TYPE = "value_routing"
_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


class ValueRoutingConfig(PretrainedConfig):
    """A :class:`ModelConfig` as a ``PretrainedConfig`` (fields validated by ModelConfig)."""

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(self, **kwargs: Any) -> None:
        fields = {name: kwargs.pop(name) for name in _FIELDS if name in kwargs}
        if fields.get("strategy_options") is None:
            fields.pop("strategy_options", None)
        cfg = ModelConfig(**fields)  # raises a ValueError naming any bad field
        for name in _FIELDS:
            value = getattr(cfg, name)
            setattr(self, name, dict(value) if name == "strategy_options" else value)
        kwargs.setdefault("tie_word_embeddings", cfg.tie_embeddings)
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> "ValueRoutingConfig":
        return cls(**{name: getattr(cfg, name) for name in _FIELDS}, **kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in _FIELDS})


class ValueRoutingCache:
    """``past_key_values`` for ``generate``: a :class:`KVCache` that grows by doubling when full.

    Mutable on purpose (``generate`` threads one object through its steps); the model itself
    still receives and returns immutable :class:`KVCache` values.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, kv: KVCache | None = None) -> None:
        self.kv = kv

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.kv is None else self.kv.length

    def reserve(self, cfg: ModelConfig, batch: int, new_tokens: int, like: torch.Tensor) -> KVCache:
        """The cache with room for ``new_tokens`` more positions (reallocated if needed)."""
        length = self.get_seq_length()
        need = length + new_tokens
        if need > cfg.max_seq_len:
            raise ValueError(f"sequence length {need} exceeds max_seq_len {cfg.max_seq_len}")
        if self.kv is not None and self.kv.capacity >= need:
            return self.kv
        capacity = min(cfg.max_seq_len, max(need, 2 * (0 if self.kv is None else self.kv.capacity), 64))
        grown = KVCache.allocate(cfg, batch, capacity, like.device, like.dtype)
        padded = False
        if self.kv is not None:
            for old, new in zip(self.kv.layers, grown.layers):
                new.k[:, :length] = old.k[:, :length]
                new.v[:, :length] = old.v[:, :length]
            grown.keep[:, :length] = self.kv.keep[:, :length]
            padded = self.kv.padded
        self.kv = KVCache(grown.layers, length, grown.keep, padded)
        return self.kv

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        if self.kv is not None:
            layers = tuple(
                LayerCache(c.k.index_select(0, beam_idx.to(c.k.device)), c.v.index_select(0, beam_idx.to(c.v.device)))
                for c in self.kv.layers
            )
            self.kv = KVCache(layers, self.kv.length, self.kv.keep.index_select(0, beam_idx.to(self.kv.keep.device)),
                              self.kv.padded)


class ValueRoutingForCausalLM(PreTrainedModel, GenerationMixin):
    """:class:`CausalLM` behind the ``PreTrainedModel`` interface (weights under ``model.``)."""

    config_class = ValueRoutingConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["TransformerBlock"]

    def __init__(self, config: ValueRoutingConfig) -> None:
        super().__init__(config)
        self.model = CausalLM(config.to_model_config())
        self.post_init()

    @classmethod
    def from_causal_lm(cls, model: CausalLM) -> "ValueRoutingForCausalLM":
        """Wrap an existing model (parameters are shared, not copied)."""
        with torch.device("meta"):
            hf = cls(ValueRoutingConfig.from_model_config(model.cfg))
        hf.model = model
        return hf

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained``, refusing checkpoints with missing weights.

        Our modules initialise themselves in their constructors, which ``from_pretrained``
        runs on the meta device, so a missing weight would otherwise be left uninitialised.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if info["missing_keys"]:
            raise ValueError(f"checkpoint is missing weights {sorted(info['missing_keys'])}")
        with torch.no_grad():
            # Weights read from the file may sit at any byte offset; CPU GEMM kernels round
            # differently on unaligned rows (a 1-row gate projection showed 2e-7), so a reloaded
            # model would not reproduce the saved one bit for bit. Each gets memory of its own.
            for param in model.parameters():
                if param.data_ptr() % 64:
                    param.data = param.data.clone()
        return (model, info) if want_info else model

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        # Parameters are initialised by CausalLM itself; only the RoPE tables (non-persistent
        # buffers, left empty when from_pretrained builds on the meta device) are recomputed.
        if isinstance(module, CausalLM) and module.rope_cos.device.type != "meta":
            module.reset_rope()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate must not build a DynamicCache: we bring our own ValueRoutingCache

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def get_output_embeddings(self) -> torch.nn.Linear | None:
        return self.model.lm_head  # None when tied: the head *is* the embedding matrix

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: ValueRoutingCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits (and the mean next-token loss when ``labels`` are given, ``-100`` ignored).

        ``attention_mask`` (1 = real token, 0 = padding) covers either the new ``input_ids`` or,
        as ``generate`` passes it, the cached tokens followed by the new ones.
        """
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("inputs_embeds is not supported; pass input_ids")
        for name in ("output_attentions", "output_hidden_states"):
            if kwargs.get(name):
                raise ValueError(f"{name}=True is not supported")
        if past_key_values is None:  # transformers >= 5.x passes the cache as ``cache=``
            past_key_values = kwargs.pop("cache", None)
        if past_key_values is not None and not isinstance(past_key_values, ValueRoutingCache):
            raise ValueError(f"past_key_values must be a ValueRoutingCache or None, got {type(past_key_values).__name__}")
        if use_cache and past_key_values is None:
            past_key_values = ValueRoutingCache()
        kv = None
        if past_key_values is not None:
            batch, seq = input_ids.shape
            kv = past_key_values.reserve(self.model.cfg, batch, seq, self.model.embed.weight)
        attention_mask = self._new_tokens_mask(attention_mask, input_ids, kv)
        logits, kv = self.model(input_ids, cache=kv, attention_mask=attention_mask)
        if past_key_values is not None:
            past_key_values.kv = kv
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        if return_dict is False:
            return tuple(t for t in (loss, logits, past_key_values) if t is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)


    @staticmethod
    def _new_tokens_mask(mask: torch.Tensor | None, input_ids: torch.Tensor, kv: KVCache | None) -> torch.Tensor | None:
        """The mask columns of ``input_ids``; ``None`` when it pads nothing (the plain causal path)."""
        if mask is None or not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            return mask  # None, or malformed: CausalLM.forward names the problem
        past = 0 if kv is None else kv.length
        if past and mask.shape[1] == past + input_ids.shape[1]:
            mask = mask[:, past:]
        padded = kv is not None and kv.padded
        if not padded and mask.shape == input_ids.shape and bool((mask == 1).all()):
            return None
        return mask


def register() -> None:
    """Register :class:`ValueRoutingConfig` / :class:`ValueRoutingForCausalLM` with ``AutoConfig`` / ``AutoModelForCausalLM``."""
    AutoConfig.register(MODEL_TYPE, ValueRoutingConfig, exist_ok=True)
    AutoModelForCausalLM.register(ValueRoutingConfig, ValueRoutingForCausalLM, exist_ok=True)


register()

__all__ = ["MODEL_TYPE", "ValueRoutingCache", "ValueRoutingConfig", "ValueRoutingForCausalLM", "register"]
