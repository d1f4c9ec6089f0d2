"""A prepared dataset folder, loaded and checked.

Loading re-derives the content fingerprint and checks id alignment, so a folder
edited by hand or half-copied is refused instead of silently misaligning items.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from tcf.data.prepare import (
    FORMAT_VERSION,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    META_FILE,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    USERS_FILE,
    VALID,
    dataset_fingerprint,
    render_texts,
    text_fingerprint,
)
from tcf.errors import DataError


@dataclass
class Dataset:
    path: Path
    meta: dict
    items: pd.DataFrame  # item_id (1..N, row i-1 is item i), source_id, text, text fields
    interactions: pd.DataFrame  # user_id, item_id, timestamp, split; sorted by user then time
    users: pd.DataFrame  # user_id, source_id

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def template(self) -> str:
        return self.meta["template"]

    def item_texts(self, template: str | None = None) -> list[str]:
        """Text per item_id; index 0 is the padding item ('')."""
        if template is None or template == self.template:
            texts = self.items["text"].astype(str).tolist()
        else:
            texts = render_texts(self.items, template, self.meta["text_fields"]).astype(str).tolist()
        return ["", *texts]

    def text_fingerprint(self, template: str | None = None) -> str:
        if template is None or template == self.template:
            return self.meta["text_fingerprint"]
        return text_fingerprint(self.items["item_id"].to_numpy(), self.item_texts(template)[1:])

    @cached_property
    def _offsets(self) -> np.ndarray:
        counts = np.bincount(self.interactions["user_id"].to_numpy(), minlength=self.n_users + 1)
        return np.cumsum(counts)  # user u's rows are offsets[u-1]:offsets[u]

    def sequence(self, user_id: int) -> np.ndarray:
        """All item ids of a user in time order (train items, then validation, then test target)."""
        o = self._offsets
        return self.interactions["item_id"].to_numpy()[o[user_id - 1]:o[user_id]]

    def sequences(self) -> list[np.ndarray]:
        """Per user_id (index 0 empty), the full item sequence in time order."""
        items = self.interactions["item_id"].to_numpy()
        o = self._offsets
        return [items[:0]] + [items[o[u - 1]:o[u]] for u in range(1, self.n_users + 1)]

    def targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(user_ids, target item_ids) of the ``valid`` or ``test`` split."""
        code = {"valid": VALID, "test": TEST}.get(split)
        if code is None:
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        rows = self.interactions[self.interactions["split"] == code]
        return rows["user_id"].to_numpy(), rows["item_id"].to_numpy()

    def train_interactions(self) -> pd.DataFrame:
        return self.interactions[self.interactions["split"] == TRAIN]

    def summary(self) -> str:
        s = self.meta["stats"]
        names = ", ".join(f"{SPLIT_NAMES[c]} {s['n_' + SPLIT_NAMES[c]]:,}" for c in (TRAIN, VALID, TEST))
        seq = s["seq_len"]
        lines = [
            f"dataset      {self.path}",
            f"source       {self.meta['source']}  ({json.dumps(self.meta.get('source_info', {}), ensure_ascii=False)})",
            f"users        {s['n_users']:,}",
            f"items        {s['n_items']:,}",
            f"interactions {s['n_interactions']:,}  (density {s['density']:.4%})",
            f"split        {names}  (leave-one-out by time)",
            f"sequence     min {seq['min']}, median {seq['median']:g}, mean {seq['mean']:.1f}, max {seq['max']}",
            f"time ties    {s['timestamp_ties']:,} interactions share their timestamp with another of the same user "
            "(ordered by file position)",
            f"text         template {self.template!r}; mean {s['text_chars']['mean']:.1f} chars, "
            f"max {s['text_chars']['max']}; {s['non_ascii_texts']} non-ASCII",
            f"fingerprint  {self.fingerprint[:16]}  (text {self.meta['text_fingerprint'][:16]})",
        ]
        extra = {k: s[k] for k in ("dropped_duplicates", "dropped_kcore", "dropped_truncated") if s.get(k)}
        if extra:
            lines.append("dropped      " + ", ".join(f"{k[8:]} {v:,}" for k, v in extra.items()))
        return "\n".join(lines)


def load_dataset(path: str | Path, *, verify: bool = True) -> Dataset:
    """Load a folder written by ``tcf data prepare``; ``verify`` re-derives the fingerprint."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise DataError(path, f"not a tcf dataset ({META_FILE} missing); create one with `tcf data prepare`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(meta_file, f"not valid JSON ({e.msg})", line=e.lineno) from None
    if meta.get("format") != "tcf-dataset" or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(meta_file, f"unsupported dataset format {meta.get('format')!r} version "
                        f"{meta.get('format_version')!r}; prepare it again with this tcf")
    tables = {}
    for name in (ITEMS_FILE, INTERACTIONS_FILE, USERS_FILE):
        try:
            tables[name] = pd.read_parquet(path / name)
        except FileNotFoundError:
            raise DataError(path / name, "file missing from the dataset folder") from None
        except Exception as e:
            raise DataError(path / name, f"unreadable ({type(e).__name__}: {e})") from None
    items, inter, users = tables[ITEMS_FILE], tables[INTERACTIONS_FILE], tables[USERS_FILE]
    n = len(items)
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(1, n + 1)):
        raise DataError(path / ITEMS_FILE, "item_id is not 1..N in row order; the table is misaligned")
    iid = inter["item_id"].to_numpy()
    if len(iid) and (iid.min() < 1 or iid.max() > n):
        raise DataError(path / INTERACTIONS_FILE, f"item_id outside 1..{n}", field="item_id")
    if verify:
        fp = dataset_fingerprint(items, inter, users, meta["preprocessing"])
        if fp != meta["fingerprint"]:
            raise DataError(path, "content does not match the fingerprint in dataset.json (files changed or mixed "
                            "from two preparations); prepare it again")
    return Dataset(path, meta, items, inter, users)
