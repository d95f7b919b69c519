"""Named entries of one kind, declared once and read by every consumer.

A basis, a sampler or a metric is registered here under its name with its help text; config
validation, the CLI's choices and help, the schedulers and the reports all read the registry,
so adding one touches the module that defines it and nothing else.

The sampler registry lives here rather than in ``samplers.py`` so that the process can run a
sampler by name (``SqueezedDiffusion.sample``) without importing the samplers, which import the
process: the modules of ``core`` form no import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_REQUIRED = object()  # get()'s "no default given", distinct from a default of None


class Registry(Generic[T]):
    """Entries by canonical name, plus aliases (older names that still load)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Add ``entry`` under ``name`` (a non-empty string: the CLI and YAML files use it)
        and ``aliases``; a name or alias already taken raises, since it would silently
        point elsewhere (or nowhere)."""
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        for taken in (name, *aliases):
            if taken in self._entries or taken in self._aliases:
                raise ValueError(f"{self.kind} {taken!r} is already registered")
        if name in aliases or len(set(aliases)) != len(aliases):
            raise ValueError(f"{self.kind} {name!r}: repeated name in aliases {aliases}")
        own = getattr(entry, "name", name)  # consumers look entries up by their own name
        if own != name:
            raise ValueError(
                f"{self.kind} {own!r} registered as {name!r}: register it under its name, "
                f"{own!r} (aliases= adds other names)"
            )
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry and its aliases (tests register examples and clean up)."""
        del self._entries[name]
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; a one-line error otherwise."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}")

    def get(self, name: str, default: Any = _REQUIRED) -> T:
        """The entry for ``name`` (or an alias); ``default`` if given and ``name`` is unknown,
        else a one-line error listing the choices."""
        if default is not _REQUIRED and name not in self:
            return default
        return self._entries[self.canonical(name)]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    # dict's reading methods: 0.1.0's SAMPLERS was a dict, and user code reads it as one.
    keys = names

    def values(self) -> list[T]:
        return list(self._entries.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: Any) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def help(self) -> str:
        """``name: summary`` for every entry, for command-line help."""
        return "; ".join(
            f"{name}: {getattr(e, 'summary', '')}" for name, e in self._entries.items()
        )


# Filled by core/samplers.py; read by the process, the CLI, configs, sweeps and schedulers.
SAMPLERS: Registry[Any] = Registry("sampler")
