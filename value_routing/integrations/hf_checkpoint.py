"""Rebuild a value-routed Hugging Face model from its checkpoint: :func:`load_value_routed`.

``save_pretrained`` of a patched model writes the strategy's weights with the model's (under the
base model's ``value_routing.`` prefix) and records the strategy in ``config.json``; a plain
``from_pretrained`` knows neither. This module loads the model, patches it from the record and reads
the strategy's weights from the checkpoint's safetensors files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from value_routing.integrations.hf import ROUTING_ATTR, apply_value_routing, routing_of
from value_routing.typing import Tensor


def load_value_routed(path: str, model_class: Any = None, **kwargs: Any) -> nn.Module:
    """Rebuild a model saved with ``save_pretrained`` after :func:`apply_value_routing`: load it with
    ``model_class.from_pretrained(path, **kwargs)`` (default ``AutoModelForCausalLM``), patch it from
    its config's record and load the strategy's weights from the checkpoint's safetensors files.

    Loading reports (Hugging Face's) name the weights it missed or did not use, except the strategy's,
    which the plain model does not know and this call reads itself."""
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its report would list the strategy's weights as unused: ours below
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if not isinstance(getattr(model.config, ROUTING_ATTR, None), Mapping):
        raise ValueError(f"{path} records no value routing (its config has no {ROUTING_ATTR!r}): "
                         "load it with from_pretrained")
    apply_value_routing(model)
    routing = routing_of(model)
    prefix = next(name for name, module in model.named_modules() if module is routing) + "."
    routing.load_state_dict(_read_weights(path, prefix, kwargs))
    unused = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(prefix))
    for what, keys in (("missed", sorted(info.get("missing_keys", ()))), ("did not use", unused)):
        if keys:
            hf_logging.get_logger(__name__).warning(f"loading {path} {what} the weights {keys}")
    return model


def _read_weights(path: str, prefix: str, kwargs: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors named ``prefix*`` in the safetensors checkpoint at ``path``, without ``prefix``."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "subfolder", "token", "local_files_only") if k in kwargs}
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub)
    if index is None:
        files = ["model.safetensors"]
    else:
        with open(index) as f:
            files = sorted({file for name, file in json.load(f)["weight_map"].items() if name.startswith(prefix)})
    weights = {}
    for file in files:
        with safe_open(cached_file(path, file, **hub), framework="pt") as f:
            weights.update({name[len(prefix):]: f.get_tensor(name) for name in f.keys() if name.startswith(prefix)})
    return weights
