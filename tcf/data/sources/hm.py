"""Raw H&M Personalized Fashion: articles.csv and transactions_train.csv.

An article's ``description`` joins the named article columns ("Strap top. Vest top.
Black. Jersey top with narrow straps."); each of those columns is also a text field
for templates.  Timestamps are the purchase dates (many ties: file order decides).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tcf.data.io import LINE, TableSpec, parse_timestamp, read_table
from tcf.data.prepare import RawData
from tcf.errors import DataError

DEFAULT_COLUMNS = ["prod_name", "product_type_name", "colour_group_name", "detail_desc"]


@dataclass(frozen=True)
class Options:
    text_columns: list[str] = field(default_factory=lambda: list(DEFAULT_COLUMNS))
    articles: str = "articles.csv"
    transactions: str = "transactions_train.csv"


def _normalise_ids(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Article ids are numbers written with a leading zero in one file and maybe not in another."""
    a, b = a.str.strip(), b.str.strip()
    if a.str.isdigit().all() and b.str.isdigit().all():
        return a.str.lstrip("0").replace("", "0"), b.str.lstrip("0").replace("", "0")
    return a, b


def read(path: Path | None, options: Options = Options()) -> RawData:
    if path is None:
        raise DataError(None, "hm needs the folder holding articles.csv and transactions_train.csv")
    if not options.text_columns:
        raise DataError(None, "text_columns is empty: name the article columns that make the description")
    folder = Path(path)
    art_file, tx_file = folder / options.articles, folder / options.transactions
    spec = TableSpec(sep=",", header=True, quoting=True)
    art = read_table(art_file, spec, required=["article_id", *options.text_columns],
                     usecols=["article_id", *options.text_columns])
    tx = read_table(tx_file, spec, required=["t_dat", "customer_id", "article_id"],
                    usecols=["t_dat", "customer_id", "article_id"])
    art_ids, tx_items = _normalise_ids(art["article_id"], tx["article_id"])
    parts = [art[c].fillna("").str.strip().str.rstrip(".") for c in options.text_columns]
    description = [". ".join(p for p in row if p) + ("." if any(row) else "") for row in zip(*parts)]
    items = pd.DataFrame({"source_id": art_ids, **{c: art[c] for c in options.text_columns},
                          "description": pd.array(description, dtype="string"), LINE: art[LINE]})
    inter = pd.DataFrame({"user": tx["customer_id"], "item": tx_items,
                          "timestamp": parse_timestamp(tx, "t_dat", tx_file, fmt="%Y-%m-%d"), LINE: tx[LINE]})
    return RawData("hm", items, art_file, inter, tx_file, [*options.text_columns, "description"], "{description}",
                   "description", item_id_column="article_id", user_column="customer_id", item_column="article_id",
                   files=[art_file, tx_file], info={"text_columns": list(options.text_columns)})
