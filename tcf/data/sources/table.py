"""Any CSV / TSV / parquet pair with a column mapping.

Example (YAML given with ``--config``, or the same keys with ``--set``)::

    interactions: ratings.csv
    items: movies.csv
    user: userId
    item: movieId
    time: timestamp          # omitted: a `timestamp` column if there is one, else file order; null: file order
    item_id: movieId         # the id column of the item file (default: same as `item`)
    text: [title, genres]    # text fields; the first one may not be empty
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tcf.data.io import LINE, TableSpec, parse_timestamp, read_parquet_table, read_table
from tcf.data.prepare import RawData
from tcf.errors import DataError

_SEPS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
AUTO_TIME, DEFAULT_TIME_COLUMN = "auto", "timestamp"


@dataclass(frozen=True)
class Options:
    interactions: str | None = None  # file of (user, item, time) rows; relative to PATH when one is given
    items: str | None = None  # file of items with their text
    user: str = "user_id"
    item: str = "item_id"
    time: str | None = AUTO_TIME  # the time column; None: file order; "auto": `timestamp` if present, else file order
    time_format: str | None = None  # None: numeric seconds; "iso"; or a strftime pattern
    item_id: str | None = None  # id column in the items file; default: `item`
    text: list[str] = field(default_factory=lambda: ["title"])
    sep: str | None = None  # default by file extension (.csv ",", .tsv "\t")
    header: bool = True


def _read(path: Path, options: Options, required: list[str]) -> pd.DataFrame:
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet_table(path, required=required)
    sep = options.sep if options.sep is not None else _SEPS.get(path.suffix.lower())
    if sep is None:
        raise DataError(path, "cannot tell the separator from the extension; set sep")
    sep = {"tab": "\t", "\\t": "\t", "comma": ","}.get(sep, sep)
    if not options.header:
        raise DataError(path, "files without a header need column names; add a header line")
    return read_table(path, TableSpec(sep=sep, header=True, quoting=sep == ","), required=required)


def read(path: Path | None, options: Options = Options()) -> RawData:
    if options.interactions is None or options.items is None:
        raise DataError(None, "table needs both files: --set interactions=FILE items=FILE (or a --config YAML)")
    if not options.text:
        raise DataError(None, "table needs at least one text column: --set text=title,description")
    base = Path(path) if path is not None else Path(".")
    inter_file, item_file = base / options.interactions, base / options.items
    id_col = options.item_id or options.item
    raw_items = _read(item_file, options, [id_col, *options.text])
    items = pd.DataFrame({"source_id": raw_items[id_col], **{c: raw_items[c] for c in options.text},
                          LINE: raw_items[LINE]})
    auto = options.time == AUTO_TIME
    cols = [options.user, options.item] + ([options.time] if options.time and not auto else [])
    raw = _read(inter_file, options, cols)
    time = (DEFAULT_TIME_COLUMN if DEFAULT_TIME_COLUMN in raw.columns else None) if auto else options.time
    ts = (parse_timestamp(raw, time, inter_file, fmt=options.time_format) if time
          else np.arange(len(raw), dtype=np.int64))
    inter = pd.DataFrame({"user": raw[options.user], "item": raw[options.item], "timestamp": ts, LINE: raw[LINE]})
    return RawData("table", items, item_file, inter, inter_file, list(options.text), "{" + options.text[0] + "}",
                   options.text[0], item_id_column=id_col, user_column=options.user, item_column=options.item,
                   files=[inter_file, item_file], info={"mapping": {"user": options.user, "item": options.item,
                                                                    "time": time, "item_id": id_col}})
