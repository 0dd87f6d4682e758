"""Integrations of the strategies into other libraries' models (each optional: importing this
package imports none of those libraries)."""

from value_routing.integrations.hf import SUPPORTED_FAMILIES, apply_value_routing, routing_of
from value_routing.integrations.hf_checkpoint import load_value_routed

__all__ = ["SUPPORTED_FAMILIES", "apply_value_routing", "load_value_routed", "routing_of"]
