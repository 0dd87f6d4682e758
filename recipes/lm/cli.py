"""What every command-line tool of the recipes shares: argparse's convention for user errors.

A user error is one line on stderr naming the flag (``prog: error: ...``) and exit status 2, never a
traceback. Three helpers get there:

* argparse ``type=`` functions for counts and numbers (:func:`positive_int`, :func:`non_negative_int`,
  :func:`positive_float`, :func:`non_negative_float`, :func:`int_at_least`): ``0`` is a value, never
  "unset" (unset is ``None``, argparse's default), so a bad one is refused where it is parsed;
* :func:`dataclass_override`: the ``type=`` of ``--set FIELD=VALUE`` items, converting VALUE to the
  field's annotated type, read from the dataclass when called (fields come and go);
* :func:`user_errors`: the ValueError of a config's ``__post_init__`` (or a FileNotFoundError of a
  path the user gave) raised after parsing reaches the user as ``parser.error``, its leading field
  name replaced by the flag. Anything else — a real bug — still raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping as MappingABC, Sequence as SequenceABC
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def _float_type(name: str, ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a finite number {rule}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number {rule}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = _float_type("positive_float", lambda v: v > 0, "> 0")
non_negative_float = _float_type("non_negative_float", lambda v: v >= 0, ">= 0")

_NONE = ("none", "null")
_BOOLS = {"true": True, "false": False}


def _convert(hint: Any, text: str) -> Any:
    """``text`` as a value of type ``hint``; ValueError (saying what was expected) if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in _NONE:
            return None
        rest = [a for a in args if a is not type(None)]
        for kind in rest:
            try:
                return _convert(kind, text)
            except ValueError:
                pass
        raise ValueError(" or ".join([_describe(k) for k in rest] + (["none"] if type(None) in args else [])))
    if origin is typing.Literal:
        for allowed in args:
            if str(allowed) == text:
                return allowed
        raise ValueError(f"one of {args}")
    if hint is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(_describe(bool))
        return _BOOLS[text.lower()]
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(_describe(hint)) from None
    if hint is str:
        return text
    if origin is not None and isinstance(origin, type) and issubclass(origin, (MappingABC, SequenceABC)):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        want = dict if issubclass(origin, MappingABC) else list
        if not isinstance(value, want):
            raise ValueError(_describe(hint))
        return value if want is dict else tuple(value) if origin is tuple else value
    try:  # a type this module does not know: JSON if it parses, else the text; the config validates it
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is not None and isinstance(origin, type) and issubclass(origin, MappingABC):
        return "a JSON object"
    if origin is not None and isinstance(origin, type) and issubclass(origin, SequenceABC):
        return "a JSON list"
    return {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string"}.get(hint, str(hint))


def dataclass_override(cls: type) -> Callable[[str], tuple[str, Any]]:
    """An argparse type parsing ``FIELD=VALUE`` into ``(field, value)`` of the dataclass ``cls``.

    VALUE is converted to the field's annotation: ``int``, ``float``, ``bool`` (``true``/``false``),
    ``str``, optional types (``none``/``null`` is None), mappings and sequences (JSON). The fields
    and annotations are read at each call, so the type follows the dataclass as it changes.
    """

    def parse(item: str) -> tuple[str, Any]:
        key, eq, text = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"takes FIELD=VALUE items, got {item!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise argparse.ArgumentTypeError(
                f"unknown {cls.__name__} field {key!r}{hint}; known fields: {', '.join(names)}")
        try:
            return key, _convert(hints[key], text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{key} takes {err}, got {text!r}") from None

    parse.__name__ = f"{cls.__name__}_override"
    return parse


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``dest -> flag`` of every option of ``parser``: its first long option string (``--resume``, not
    ``--no-resume``)."""
    return {a.dest: next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
            for a in parser._actions if a.option_strings}


def with_flags(message: str, flags: Mapping[str, str], flag: str | None = None) -> str:
    """``message`` on one line, its leading field name replaced by the flag; else prefixed by ``flag``."""
    message = " ".join(message.split())
    head = re.match(r"[A-Za-z_]\w*", message)
    if head and head.group() in flags:
        return flags[head.group()] + message[head.end():]
    return f"{flag}: {message}" if flag else message


@contextmanager
def user_errors(parser: argparse.ArgumentParser, flags: Mapping[str, str] | None = None,
                flag: str | None = None) -> Iterator[None]:
    """Turn a ValueError or FileNotFoundError raised inside into ``parser.error`` (exit status 2).

    Wrap only what validates the user's input (config construction, opening the paths given):
    a ValueError from deeper code would be a bug, and must keep its traceback.
    """
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        parser.error(with_flags(str(err) if not isinstance(err, FileNotFoundError) or not err.filename
                                else f"{err.strerror}: {err.filename!r}", flags or {}, flag))


def check_writable(path: str, kind: str) -> None:
    """Raise ValueError unless ``path`` can be written as ``kind`` (``"directory"`` or ``"file"``):
    it is one already, or the nearest existing ancestor is a writable directory. Nothing is created,
    so a tool can check its outputs before it starts its work."""
    if kind not in ("directory", "file"):
        raise ValueError(f"kind must be 'directory' or 'file', got {kind!r}")
    target = os.path.abspath(path)
    if os.path.exists(target):
        is_kind = os.path.isdir(target) if kind == "directory" else os.path.isfile(target)
        if not is_kind:
            raise ValueError(f"{path!r} exists and is not a {kind}")
        if not os.access(target, os.W_OK):
            raise ValueError(f"{path!r} is not writable")
        return
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"cannot create {path!r}: {parent!r} is not a directory")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot create {path!r}: {parent!r} is not writable")


def writable(kind: str) -> Callable[[str], str]:
    """An argparse type: a path :func:`check_writable` accepts as ``kind``, so an output a tool
    would only write after its work (a benchmark's, a report's) is refused before that work starts."""
    if kind not in ("directory", "file"):
        raise ValueError(f"kind must be 'directory' or 'file', got {kind!r}")

    def parse(text: str) -> str:
        try:
            check_writable(text, kind)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    parse.__name__ = f"writable_{kind}"
    return parse
