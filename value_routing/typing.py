"""Shape-annotated tensor aliases and the opt-in runtime shape checker.

Annotations use jaxtyping (``Float[Tensor, "batch seq kv_heads head_dim"]``). They are
checked with beartype only when ``VALUE_ROUTING_TYPECHECK=1`` is set before import (the
test-suite does this), so production code pays nothing. While ``torch.compile`` traces, the
unchecked function runs so the checker never causes a graph break.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, TypeVar

import torch
from jaxtyping import Bool, Float, Int, Shaped, jaxtyped
from torch import Tensor

__all__ = ["Bool", "Float", "Int", "Shaped", "Tensor", "shapecheck", "TYPECHECK_ENABLED"]

TYPECHECK_ENABLED: bool = os.environ.get("VALUE_ROUTING_TYPECHECK", "0") == "1"

F = TypeVar("F", bound=Callable)


def shapecheck(fn: F) -> F:
    """Check ``fn``'s jaxtyping annotations with beartype when type checking is enabled."""
    if not TYPECHECK_ENABLED:
        return fn
    from beartype import beartype

    checked = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return checked(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
