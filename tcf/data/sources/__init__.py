"""Source readers: raw files of a known layout -> :class:`tcf.data.prepare.RawData`.

Each source module has an ``Options`` dataclass (its own settings, set with
``--set key=value`` or a YAML ``--config``) and ``read(path, options)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tcf.errors import ConfigError

SOURCES = {
    "ml-100k": "tcf.data.sources.ml100k",
    "tcf-tsv": "tcf.data.sources.tcf_tsv",
    "mind": "tcf.data.sources.mind",
    "hm": "tcf.data.sources.hm",
    "table": "tcf.data.sources.table",
    "synthetic": "tcf.data.sources.synthetic",
}


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ConfigError(f"unknown data source {name!r}; known sources: {sorted(SOURCES)}")
    return importlib.import_module(SOURCES[name])
