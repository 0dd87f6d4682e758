"""Field checks shared by the recipes' frozen config dataclasses.

Each raises a ValueError whose message names the field, the allowed values and the value given.
"""

from __future__ import annotations

from typing import Any, Iterable


def check_min(config: Any, minimum: int, *names: str) -> None:
    """Every field in ``names`` of ``config`` is ``>= minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_choice(config: Any, name: str, allowed: Iterable[Any]) -> None:
    """Field ``name`` of ``config`` is one of ``allowed``."""
    allowed, value = tuple(allowed), getattr(config, name)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

