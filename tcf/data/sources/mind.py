"""Raw MIND (Microsoft News): news.tsv and behaviors.tsv, no headers.

A user's sequence is their click history, then the clicked impressions (``-1``) in
time order.  History items carry no time in MIND: they are stamped one second
before the user's first impression, in their listed order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcf.data.io import LINE, TableSpec, parse_timestamp, read_table
from tcf.data.prepare import RawData
from tcf.errors import DataError

NEWS_COLUMNS = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities",
                "abstract_entities"]
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
TEXT_FIELDS = ["title", "abstract", "category", "subcategory"]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


@dataclass(frozen=True)
class Options:
    include_history: bool = True  # start each sequence with the user's listed click history


def read(path: Path | None, options: Options = Options()) -> RawData:
    if path is None:
        raise DataError(None, "mind needs the folder holding news.tsv and behaviors.tsv")
    folder = Path(path)
    news_file, beh_file = folder / "news.tsv", folder / "behaviors.tsv"
    news = read_table(news_file, TableSpec(sep="\t", header=False, names=NEWS_COLUMNS))
    items = news[["news_id", *TEXT_FIELDS, LINE]].rename(columns={"news_id": "source_id"})
    beh = read_table(beh_file, TableSpec(sep="\t", header=False, names=BEHAVIOR_COLUMNS))
    times = parse_timestamp(beh, "time", beh_file, fmt=TIME_FORMAT)
    beh_lines = beh[LINE].to_numpy()
    users = beh["user_id"].tolist()
    # the earliest row of each user (ties: first in the file) gives the history
    order = np.lexsort((np.arange(len(beh)), times))
    first_row: dict[str, int] = {}
    for r in order.tolist():
        first_row.setdefault(users[r], r)
    rec_user, rec_item, rec_time, rec_line = [], [], [], []

    def add(user, item, t, line):
        rec_user.append(user)
        rec_item.append(item)
        rec_time.append(t)
        rec_line.append(line)

    histories = beh["history"].tolist()
    impressions = beh["impressions"].tolist()
    for r in range(len(beh)):
        user, line = users[r], int(beh_lines[r])
        if options.include_history and first_row[user] == r:
            for item in histories[r].split():
                add(user, item, int(times[r]) - 1, line)
        for token in impressions[r].split():
            item, sep, label = token.rpartition("-")
            if not sep or label not in ("0", "1") or not item:
                raise DataError(beh_file, f"impression {token!r} is not NEWSID-0 or NEWSID-1", line=line,
                                field="impressions")
            if label == "1":
                add(user, item, int(times[r]), line)
    if not rec_user:
        raise DataError(beh_file, "no clicks and no history in any row")
    inter = pd.DataFrame({"user": pd.array(rec_user, dtype="string"), "item": pd.array(rec_item, dtype="string"),
                          "timestamp": np.asarray(rec_time, dtype=np.int64), LINE: np.asarray(rec_line)})
    return RawData("mind", items, news_file, inter, beh_file, TEXT_FIELDS, "{title}", "title",
                   item_id_column="news_id", user_column="user_id", item_column="history/impressions",
                   files=[news_file, beh_file], info={"include_history": options.include_history})
