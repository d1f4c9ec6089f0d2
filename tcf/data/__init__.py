"""Datasets: raw files -> canonical items / interactions / leave-one-out split.

>>> from tcf.data import prepare, load_dataset
>>> prepare("ml-100k", None, "data/ml-100k")          # doctest: +SKIP
>>> ds = load_dataset("data/ml-100k")                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tcf.config import from_dict
from tcf.data.dataset import Dataset, load_dataset
from tcf.data.prepare import META_FILE, PrepareOptions, build, write
from tcf.data.sources import SOURCES, get_source
from tcf.errors import DataError

__all__ = ["Dataset", "PrepareOptions", "SOURCES", "load_dataset", "prepare", "ensure_dataset"]


def prepare(source: str, path: str | Path | None, out: str | Path, options: PrepareOptions = PrepareOptions(),
            source_options: Mapping[str, Any] | None = None) -> Dataset:
    """Read ``source`` files at ``path``, build the canonical dataset and write it to ``out``."""
    module = get_source(source)
    opts = from_dict(module.Options, source_options or {}, where=source)
    raw = module.read(Path(path) if path is not None else None, opts)
    ds = build(raw, options)
    write(ds, out)
    return load_dataset(out)


def ensure_dataset(name: str | Path, root: str | Path = "data", **kwargs) -> Dataset:
    """A dataset folder, a folder name under ``root`` (``mine`` for ``data/mine``, as ``ml-100k`` is
    ``data/ml-100k``), or a source name prepared under ``root/NAME`` on first use and reused after."""
    p, under_root = Path(name), Path(root) / str(name)
    for folder in (p, under_root):
        if (folder / META_FILE).is_file():
            return load_dataset(folder)
    if str(name) in SOURCES:
        return prepare(str(name), None, under_root, **kwargs)
    if p.is_dir():
        return load_dataset(p)  # a folder that is not a dataset: says which file is missing
    raise DataError(None, f"no dataset '{name}': neither a folder nor {under_root} holds a {META_FILE}, and it is "
                          f"not a source ({', '.join(SOURCES)}); make one with `tcf data prepare SOURCE PATH "
                          f"--out {under_root}`")
