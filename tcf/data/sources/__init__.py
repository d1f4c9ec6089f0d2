"""Source readers: raw files of a known layout -> :class:`tcf.data.prepare.RawData`.

Each source module has an ``Options`` dataclass (its own settings, set with
``--set key=value`` or a YAML ``--config``) and ``read(path, options)``.
"""

from __future__ import annotations

from types import ModuleType

from tcf.errors import ConfigError
from tcf.extensions import SOURCES  # the sources' names and modules live in tcf.extensions


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ConfigError(f"unknown data source {name!r}; known sources: {SOURCES.names()}")
    return SOURCES.get(name)
