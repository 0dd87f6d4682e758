"""Named registries: one per extension point (strategies, attention backends, blocks), open to users.

A :class:`Registry` maps names to entries and is a read-only :class:`~collections.abc.Mapping`
for everything else (``list(STRATEGIES)``, ``"satformer" in STRATEGIES``). Entries are added with
:meth:`Registry.register`, directly or as a decorator, from anywhere — a user's own module
included::

    from value_routing import STRATEGIES, Strategy

    @STRATEGIES.register("mine")
    class Mine(Strategy):
        ...

Looking up an unknown name raises an error naming the field and the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names → entries of one kind. ``field`` is the config field that names an entry (for errors)."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind, self.field = kind, field
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, entry: None = None, *, replace: bool = False) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):  # type: ignore[no-untyped-def]
        """Add ``entry`` under ``name`` (returns it); without ``entry``, a decorator that does.

        A name is registered once: registering it again raises unless ``replace=True``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); "
                                 "pass replace=True to override it")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (e.g. to undo a test's registration)."""
        return self._entries.pop(self._check(name))

    def _check(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"{self.field} must be one of {tuple(self._entries)}, got {name!r}")
        return name

    def lookup(self, name: object) -> T:
        """The entry of ``name``; a ValueError naming :attr:`field` and the registered names if none."""
        return self._entries[self._check(name)]

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"{self.field} must be one of {tuple(self._entries)}, got {name!r}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
