"""A registry of named implementations, imported only when chosen.

Heavy optional packages (vllm, deepspeed, bitsandbytes, HTTP clients) are imported
by the implementing module, so naming a backend costs nothing until it is used, and
a missing package gives one message saying what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from tcf.errors import ConfigError, TcfError


@dataclass(frozen=True)
class Entry:
    target: str  # "package.module:attribute"
    extra: str | None = None  # pip extra that provides its packages
    packages: tuple[str, ...] = ()  # top-level modules it needs, checked before import


class Registry:
    def __init__(self, kind: str, entries: dict[str, Entry]):
        self.kind = kind
        self.entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str):
        if name not in self.entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {self.names()}")
        entry = self.entries[name]
        for pkg in entry.packages:
            if importlib.util.find_spec(pkg) is None:
                how = f"pip install 'tcf[{entry.extra}]'" if entry.extra else f"pip install {pkg}"
                raise TcfError(f"{self.kind} {name!r} needs the package '{pkg}', which is not installed: {how}")
        module, attr = entry.target.split(":")
        return getattr(importlib.import_module(module), attr)
