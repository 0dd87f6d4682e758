"""The argument checks every strategy's constructor shares: a ValueError that names the argument,
says what is allowed and repeats the value, raised before a bad number reaches an initialiser
(where ``nn.init.normal_(std=nan)`` fails with torch's message, or ``torch.full(nan)`` builds a
model that trains to NaN without a word)."""

from __future__ import annotations

import math


def check_int(name: str, value: object, low: int) -> None:
    """A ValueError naming ``name`` unless ``value`` is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_number(name: str, value: object, minimum: float | None = None, *, strict: bool = False,
                 optional: bool = False) -> None:
    """A ValueError naming ``name`` unless ``value`` is a finite number (not a bool), ``>= minimum``
    (``> minimum`` when ``strict``); ``None`` passes when ``optional``."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be {'None or ' if optional else ''}a finite number{bound}, got {value!r}")
