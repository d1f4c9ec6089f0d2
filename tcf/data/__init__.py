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

__all__ = ["Dataset", "PrepareOptions", "SOURCES", "dataset_for", "ensure_dataset", "load_dataset", "prepare"]


def prepare(source: str, path: str | Path | None, out: str | Path, options: PrepareOptions = PrepareOptions(),
            source_options: Mapping[str, Any] | None = None) -> Dataset:
    """Read ``source`` files at ``path``, build the canonical dataset and write it to ``out``."""
    module = get_source(source)
    opts = from_dict(module.Options, source_options or {}, where=source)
    raw = module.read(Path(path) if path is not None else None, opts)
    ds = build(raw, options)
    write(ds, out)
    return load_dataset(out)


def ensure_dataset(name: str | Path, root: str | Path = "data", *, source_options: Mapping[str, Any] | None = None,
                   **kwargs) -> Dataset:
    """A dataset folder, a folder name under ``root`` (``mine`` for ``data/mine``, as ``ml-100k`` is
    ``data/ml-100k``), or a source name prepared under ``root/NAME`` on first use and reused after.

    ``source_options`` (a source name only, e.g. a larger synthetic catalogue): the source is prepared
    with them under ``root/NAME-HASH``, HASH a digest of the options, so each setting is its own dataset."""
    if source_options:
        return _with_options(str(name), Path(root), dict(source_options), **kwargs)
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


def _with_options(name: str, root: Path, options: dict, **kwargs) -> Dataset:
    from tcf.hashing import json_digest

    if name not in SOURCES:
        raise DataError(None, f"data.source_options are for a source name ({', '.join(SOURCES)}), not {name!r}")
    folder = root / f"{name}-{json_digest(options, 8)}"
    if (folder / META_FILE).is_file():
        return load_dataset(folder)
    return prepare(name, None, folder, source_options=options, **kwargs)


def dataset_for(data_cfg) -> Dataset:
    """The dataset a run config's ``data`` section names (tcf.run.config.DataConfig)."""
    return ensure_dataset(data_cfg.dataset, root=data_cfg.root, source_options=data_cfg.source_options)

