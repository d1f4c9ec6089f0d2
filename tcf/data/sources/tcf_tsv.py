"""The TCF reference code's layout: behaviors.tsv plus news.tsv, items.tsv or videos.tsv.

``behaviors.tsv`` (header; ``userid``, ``behaviors`` = space-separated item tokens
in time order) with one item table: ``news.tsv`` (``newsid``, ``title``),
``items.tsv`` (``itemid``, ``description``) or ``videos.tsv`` (``videoid``,
``description``), tab-separated with a header.

The first data row of the item table becomes item_id 1: the header line is a
header, never an item (the reference code shifts every item by one through it).
Timestamps are the positions in each user's sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcf.data.io import LINE, TableSpec, read_table
from tcf.data.prepare import RawData
from tcf.errors import DataError

ITEM_TABLES = {"news.tsv": ("newsid", "title"), "items.tsv": ("itemid", "description"),
               "videos.tsv": ("videoid", "description")}


@dataclass(frozen=True)
class Options:
    item_file: str | None = None  # which item table when the folder holds several


def read(path: Path | None, options: Options = Options()) -> RawData:
    if path is None:
        raise DataError(None, "tcf-tsv needs the folder holding behaviors.tsv and the item table")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, "not a folder (expected behaviors.tsv plus news.tsv, items.tsv or videos.tsv)")
    if options.item_file is not None:
        if options.item_file not in ITEM_TABLES:
            raise DataError(folder, f"item_file must be one of {sorted(ITEM_TABLES)}, got {options.item_file!r}")
        names = [options.item_file]
    else:
        names = [n for n in ITEM_TABLES if (folder / n).exists()]
        if not names:
            raise DataError(folder / "news.tsv", "file not found (nor items.tsv, videos.tsv)")
        if len(names) > 1:
            raise DataError(folder, f"several item tables {names}; choose one with --set item_file=NAME")
    item_file = folder / names[0]
    id_col, text_col = ITEM_TABLES[names[0]]
    spec = TableSpec(sep="\t", header=True)
    raw_items = read_table(item_file, spec, required=[id_col, text_col])
    items = pd.DataFrame({"source_id": raw_items[id_col], text_col: raw_items[text_col], LINE: raw_items[LINE]})

    beh_file = folder / "behaviors.tsv"
    beh = read_table(beh_file, spec, required=["userid", "behaviors"])
    seqs = [s.split() for s in beh["behaviors"].fillna("").tolist()]
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if (lengths == 0).any():
        i = int(np.flatnonzero(lengths == 0)[0])
        raise DataError(beh_file, "empty behaviour sequence", line=int(beh[LINE].iloc[i]), field="behaviors")
    starts = np.cumsum(lengths) - lengths
    inter = pd.DataFrame({
        "user": pd.array(np.repeat(beh["userid"].to_numpy(dtype=object), lengths), dtype="string"),
        "item": pd.array([t for s in seqs for t in s], dtype="string"),
        "timestamp": np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths),
        LINE: np.repeat(beh[LINE].to_numpy(), lengths),
    })
    return RawData("tcf-tsv", items, item_file, inter, beh_file, [text_col], "{" + text_col + "}", text_col,
                   item_id_column=id_col, user_column="userid", item_column="behaviors",
                   files=[beh_file, item_file], info={"item_table": names[0]})
