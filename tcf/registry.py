"""A registry of named implementations, imported only when chosen.

Every extension point a user names in a config (encoder and chat backends, data
sources, heads, towers, losses, pooling) is one :class:`Registry`, all listed in
:mod:`tcf.extensions`: config validation, ``--help`` texts and the docs read the
names from there, in the order they were registered.

Heavy optional packages (vllm, deepspeed, bitsandbytes, HTTP clients) are imported
by the implementing module, so naming a backend costs nothing until it is used, and
a missing package gives one message saying what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass

from tcf.errors import ConfigError, TcfError


@dataclass(frozen=True)
class Entry:
    target: str | None = None  # "package.module:attribute", "package.module", or None: a mode the code runs itself
    extra: str | None = None  # pip extra that provides its packages
    packages: tuple[str, ...] = ()  # top-level modules it needs, checked before import
    help: str = ""  # one line for --help and the docs


class Registry:
    def __init__(self, kind: str, entries: dict[str, Entry] | None = None):
        self.kind = kind
        self.entries: dict[str, Entry] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: Entry | str | None = None, **kw) -> None:
        """Add ``name``: an :class:`Entry`, or its target with Entry's other fields as keywords."""
        if name in self.entries:
            raise TcfError(f"{self.kind} {name!r} is registered twice")
        self.entries[name] = entry if isinstance(entry, Entry) else Entry(entry, **kw)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def choices(self) -> tuple[str, ...]:
        """The names in the order they were registered (the order help texts list them)."""
        return tuple(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def check(self, name: str, setting: str) -> None:
        """Refuse a config value that names nothing here: '<setting> must be one of [...]'."""
        if name not in self.entries:
            raise ConfigError(f"{setting} must be one of {list(self.entries)}, got {name!r}")

    def help(self) -> str:
        """'a | b | c': the names for a --help text."""
        return " | ".join(self.entries)

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line help) per entry, for listings and docs."""
        return [(name, entry.help) for name, entry in self.entries.items()]

    def get(self, name: str):
        if name not in self.entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {self.names()}")
        entry = self.entries[name]
        if entry.target is None:
            raise TcfError(f"{self.kind} {name!r} is a mode, not something to import")
        for pkg in entry.packages:
            if importlib.util.find_spec(pkg) is None:
                how = f"pip install 'tcf[{entry.extra}]'" if entry.extra else f"pip install {pkg}"
                raise TcfError(f"{self.kind} {name!r} needs the package '{pkg}', which is not installed: {how}")
        module, _, attr = entry.target.partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attr) if attr else loaded
