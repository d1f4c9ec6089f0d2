"""Raw tables -> one canonical dataset (items, interactions with split, users, dataset.json).

A source reader (``tcf.data.sources``) turns its files into a :class:`RawData`:
string item ids with text fields, and interactions ``(user, item, timestamp)`` in
file order, each row remembering its line.  :func:`build` checks them, applies the
preprocessing options, assigns dense ids and the leave-one-out split, and
:func:`write` stores the result atomically.

Canonical ids: ``item_id`` 1..N in the order of the item file (0 is padding),
``user_id`` 1..U in order of first appearance in the interaction file.
Interactions are sorted by user, then timestamp, ties kept in file order (a stable
sort, as RecBole does), so the split is deterministic and comparable.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tcf import __version__
from tcf.data.io import LINE
from tcf.errors import ConfigError, DataError
from tcf.fsutil import atomic_dir, atomic_write_text

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}
FORMAT_VERSION = 1
MIN_SEQ = 3  # leave-one-out needs a training item, a validation and a test target


@dataclass(frozen=True)
class PrepareOptions:
    """Preprocessing settings; all of them enter the dataset fingerprint."""

    template: str | None = None  # e.g. "{title} ({year}) {genres}"; None = the source's default
    min_user_interactions: int = 0  # k-core: drop users with fewer (iterated with items)
    min_item_interactions: int = 0  # k-core: drop items with fewer
    dedupe: bool = False  # keep only the first interaction of each (user, item) pair
    max_seq_len: int | None = None  # keep each user's last max_seq_len + 3 items (the TCF reference); None = all
    keep_unused_items: bool = False  # keep items no interaction refers to (they take part in full ranking)

    def __post_init__(self):
        for name in ("min_user_interactions", "min_item_interactions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len must be >= 1 or None, got {self.max_seq_len}")


@dataclass
class RawData:
    """What a source reader hands to :func:`build`."""

    source: str
    items: pd.DataFrame  # "source_id", one column per text field, and "_line"
    items_file: Path
    interactions: pd.DataFrame  # "user", "item" (strings), "timestamp" (int64 s), "_line"; file order
    interactions_file: Path
    text_fields: list[str]
    default_template: str
    required_field: str  # the text field that may not be empty (e.g. the title)
    # how the files name the id columns, for error messages
    item_id_column: str = "item_id"
    user_column: str = "user_id"
    item_column: str = "item_id"
    files: list[Path] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # source facts worth recording (encoding, layout)


@dataclass
class Canonical:
    items: pd.DataFrame  # item_id, source_id, text, <text fields>
    interactions: pd.DataFrame  # user_id, item_id, timestamp, split
    users: pd.DataFrame  # user_id, source_id
    meta: dict


# ---------------------------------------------------------------- templates

def template_fields(template: str) -> list[str]:
    names = []
    for _, name, _spec, _conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ConfigError(f"text template {template!r}: field {{{name}}} is not a plain field name")
        names.append(name)
    if not names:
        raise ConfigError(f"text template {template!r} uses no field")
    return names


def render_texts(items: pd.DataFrame, template: str, fields: list[str]) -> pd.Series:
    """Render the template per item; missing values become ''; whitespace is collapsed."""
    used = template_fields(template)
    unknown = [f for f in used if f not in fields]
    if unknown:
        raise ConfigError(f"text template {template!r}: unknown field {{{unknown[0]}}}; the fields are {fields}")
    columns = {f: items[f].fillna("").astype(str).tolist() for f in set(used)}
    out = [" ".join(template.format_map({f: columns[f][i] for f in columns}).split()) for i in range(len(items))]
    return pd.Series(out, index=items.index, dtype="string")


# ---------------------------------------------------------------- fingerprints

def frame_digest(df: pd.DataFrame) -> str:
    """A hash of a table's content that does not depend on the parquet writer's version."""
    h = hashlib.sha256()
    for name in df.columns:
        col = df[name]
        h.update(f"\x1e{name}\x1f".encode())
        if pd.api.types.is_integer_dtype(col):
            h.update(b"i")
            h.update(np.ascontiguousarray(col.to_numpy(dtype=np.int64)).astype("<i8").tobytes())
        else:
            h.update(b"s")
            values = col.fillna("").astype(str).tolist()
            h.update(np.array([len(v) for v in values], dtype="<i8").tobytes())
            h.update("\x00".join(values).encode("utf-8"))
    return h.hexdigest()


def text_fingerprint(item_ids: np.ndarray, texts: list[str]) -> str:
    """Hash of (item_id, text) pairs: what an embedding cache row depends on from the data side."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(item_ids, dtype="<i8").tobytes())
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    return h.hexdigest()


# ---------------------------------------------------------------- build

def _check_items(raw: RawData, template: str) -> pd.DataFrame:
    items = raw.items
    f = raw.items_file
    ids = items["source_id"].fillna("").str.strip()
    empty_id = ids == ""
    if empty_id.any():
        i = int(np.flatnonzero(empty_id.to_numpy())[0])
        raise DataError(f, "empty item id", line=int(items[LINE].iloc[i]), field=raw.item_id_column)
    items = items.assign(source_id=ids)
    req = items[raw.required_field].fillna("").str.strip()
    empty = req == ""
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f, f"empty text for item {items['source_id'].iloc[i]!r}", line=int(items[LINE].iloc[i]),
                        field=raw.required_field)
    items = items.assign(text=render_texts(items, template, raw.text_fields))
    blank = items["text"] == ""
    if blank.any():
        i = int(np.flatnonzero(blank.to_numpy())[0])
        raise DataError(f, f"text template {template!r} renders empty text for item {items['source_id'].iloc[i]!r}",
                        line=int(items[LINE].iloc[i]), field=",".join(template_fields(template)))
    dup = items["source_id"].duplicated(keep=False)
    if dup.any():
        first_line = items[dup].groupby("source_id", sort=False)[LINE].transform("min")
        for (_, row), first in zip(items[dup].iterrows(), first_line):
            if row[LINE] == first:
                continue
            orig = items[(items["source_id"] == row["source_id"]) & (items[LINE] == first)].iloc[0]
            differs = [c for c in raw.text_fields if str(orig[c]) != str(row[c])]
            if differs:
                raise DataError(f, f"duplicate item id {row['source_id']!r} with different text "
                                f"(first at line {first}: {str(orig[differs[0]])!r}, here: {str(row[differs[0]])!r})",
                                line=int(row[LINE]), field=differs[0])
        items = items[~items["source_id"].duplicated(keep="first")]
    return items.reset_index(drop=True)


def _kcore(user: np.ndarray, item: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    keep = np.ones(len(user), dtype=bool)
    while True:
        changed = False
        if min_user > 0:
            counts = np.bincount(user[keep], minlength=user.max() + 1 if len(user) else 0)
            drop = keep & (counts[user] < min_user)
            changed |= bool(drop.any())
            keep &= ~drop
        if min_item > 0:
            counts = np.bincount(item[keep], minlength=item.max() + 1 if len(item) else 0)
            drop = keep & (counts[item] < min_item)
            changed |= bool(drop.any())
            keep &= ~drop
        if not changed:
            return keep


def build(raw: RawData, options: PrepareOptions = PrepareOptions()) -> Canonical:
    """Check raw tables and turn them into the canonical dataset."""
    template = options.template or raw.default_template
    items = _check_items(raw, template)
    counts = {"raw_interactions": int(len(raw.interactions)), "raw_items": int(len(raw.items))}
    cols, user_ids = _coded(raw, items)
    cols = _preprocess(cols, options, counts)
    if len(cols[0]) == 0:
        raise DataError(raw.interactions_file, "no interactions left after preprocessing (k-core thresholds too high?)")
    present = _check_lengths(raw, cols, user_ids)
    user_code, item_code, ts, _ = cols

    # dense ids: users by first appearance, items in item-file order
    user_map = np.full(len(user_ids), 0, dtype=np.int64)
    user_map[present] = np.arange(1, int(present.sum()) + 1)
    used = np.zeros(len(items), dtype=bool)
    used[item_code] = True
    if options.keep_unused_items:
        used[:] = True
    item_map = np.zeros(len(items), dtype=np.int64)
    item_map[used] = np.arange(1, int(used.sum()) + 1)
    uid, iid = user_map[user_code], item_map[item_code]

    interactions = pd.DataFrame({"user_id": uid, "item_id": iid, "timestamp": ts, "split": leave_one_out(uid)})
    items_out = items[used].reset_index(drop=True)
    items_out = pd.concat([pd.DataFrame({"item_id": np.arange(1, len(items_out) + 1, dtype=np.int64)}),
                           items_out[["source_id", "text", *raw.text_fields]].astype("string")], axis=1)
    users_out = pd.DataFrame({"user_id": np.arange(1, int(present.sum()) + 1, dtype=np.int64),
                              "source_id": pd.array(np.asarray(user_ids)[present], dtype="string")})
    stats = compute_stats(interactions, items_out)
    stats.update(counts)
    settings = {"source": raw.source, **asdict(options), "template": template}
    meta = {
        "format": "tcf-dataset",
        "format_version": FORMAT_VERSION,
        "source": raw.source,
        "source_info": raw.info,
        "text_fields": list(raw.text_fields),
        "template": template,
        "preprocessing": settings,
        "stats": stats,
        "fingerprint": dataset_fingerprint(items_out, interactions, users_out, settings),
        "text_fingerprint": text_fingerprint(items_out["item_id"].to_numpy(), items_out["text"].tolist()),
        "tcf_version": __version__,
    }
    return Canonical(items_out, interactions, users_out, meta)


def _coded(raw: RawData, items: pd.DataFrame) -> tuple[tuple[np.ndarray, ...], pd.Index]:
    """Interactions as (user code, item code, timestamp, file line), sorted by user, then time, ties in file
    order; every interaction must name a known item and a user.  -> (columns, user ids by first appearance)."""
    inter, fi = raw.interactions, raw.interactions_file
    item_code = pd.Index(items["source_id"]).get_indexer(inter["item"].str.strip())
    unknown = item_code < 0
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise DataError(fi, f"item {inter['item'].iloc[i]!r} is not in the item table {raw.items_file}",
                        line=int(inter[LINE].iloc[i]), field=raw.item_column)
    users = inter["user"].str.strip()
    if (users == "").any():
        i = int(np.flatnonzero((users == "").to_numpy())[0])
        raise DataError(fi, "empty user id", line=int(inter[LINE].iloc[i]), field=raw.user_column)
    user_code, user_ids = pd.factorize(users, sort=False)  # first-appearance order
    ts = inter["timestamp"].to_numpy(dtype=np.int64)
    lines = inter[LINE].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(len(inter)), ts, user_code))  # stable: user, then time, ties in file order
    return (user_code[order], item_code[order], ts[order], lines[order]), user_ids


def _preprocess(cols: tuple[np.ndarray, ...], options: PrepareOptions, counts: dict) -> tuple[np.ndarray, ...]:
    """Dedupe, k-core, keep each user's most recent max_seq_len + MIN_SEQ; what each drops goes into ``counts``."""
    user_code, item_code = cols[0], cols[1]
    if options.dedupe:
        first = ~pd.DataFrame({"u": user_code, "i": item_code}).duplicated(keep="first").to_numpy()
        counts["dropped_duplicates"] = int((~first).sum())
        cols = tuple(c[first] for c in cols)
    if options.min_user_interactions or options.min_item_interactions:
        keep = _kcore(cols[0], cols[1], options.min_user_interactions, options.min_item_interactions)
        counts["dropped_kcore"] = int((~keep).sum())
        cols = tuple(c[keep] for c in cols)
    if options.max_seq_len is not None:
        user_code = cols[0]
        limit = options.max_seq_len + MIN_SEQ
        # rank from the end within each user (arrays are grouped by user)
        starts = np.r_[0, np.flatnonzero(np.diff(user_code)) + 1]
        sizes = np.diff(np.r_[starts, len(user_code)])
        from_end = np.repeat(starts + sizes, sizes) - np.arange(len(user_code))  # 1 = last
        keep = from_end <= limit
        counts["dropped_truncated"] = int((~keep).sum())
        cols = tuple(c[keep] for c in cols)
    return cols


def _check_lengths(raw: RawData, cols: tuple[np.ndarray, ...], user_ids: pd.Index) -> np.ndarray:
    """Refuse a user with fewer than MIN_SEQ interactions; -> [users] bool, the users left."""
    user_code, lines = cols[0], cols[3]
    per_user = np.bincount(user_code, minlength=len(user_ids))
    present = per_user > 0
    short = present & (per_user < MIN_SEQ)
    if short.any():
        u = int(np.flatnonzero(short)[0])
        first_line = int(lines[np.flatnonzero(user_code == u)[0]])
        raise DataError(raw.interactions_file, f"user {user_ids[u]!r} has {per_user[u]} interaction(s); "
                        f"leave-one-out needs at least {MIN_SEQ} ({int(short.sum())} such user(s)); pass "
                        f"--min-user-interactions {MIN_SEQ} to drop them", line=first_line, field=raw.user_column)
    return present


def leave_one_out(uid: np.ndarray) -> np.ndarray:
    """Split labels of interactions grouped by user in time order: last = test, second-last = valid."""
    starts = np.r_[0, np.flatnonzero(np.diff(uid)) + 1]
    ends = np.r_[starts[1:], len(uid)]
    split = np.full(len(uid), TRAIN, dtype=np.int8)
    split[ends - 1] = TEST
    split[ends - 2] = VALID
    return split


def dataset_fingerprint(items: pd.DataFrame, interactions: pd.DataFrame, users: pd.DataFrame, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for df in (items, interactions, users):
        h.update(frame_digest(df).encode())
    return h.hexdigest()


def compute_stats(interactions: pd.DataFrame, items: pd.DataFrame) -> dict:
    uid = interactions["user_id"].to_numpy()
    ts = interactions["timestamp"].to_numpy()
    lengths = np.bincount(uid)[1:]
    split = interactions["split"].to_numpy()
    # interactions that share their timestamp with another interaction of the same user
    key = pd.DataFrame({"u": uid, "t": ts})
    ties = int(key.duplicated(keep=False).sum())
    n_users, n_items, n = int(len(lengths)), int(len(items)), int(len(interactions))
    item_pop = np.bincount(interactions["item_id"].to_numpy(), minlength=n_items + 1)[1:]
    texts = items["text"].astype(str)
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n,
        "density": n / (n_users * n_items) if n_users and n_items else 0.0,
        "seq_len": {"min": int(lengths.min()), "mean": float(lengths.mean()), "median": float(np.median(lengths)),
                    "max": int(lengths.max())},
        "n_train": int((split == TRAIN).sum()),
        "n_valid": int((split == VALID).sum()),
        "n_test": int((split == TEST).sum()),
        "timestamp_ties": ties,
        "items_without_interactions": int((item_pop == 0).sum()),
        "text_chars": {"mean": float(texts.str.len().mean()), "max": int(texts.str.len().max())},
        "non_ascii_texts": int((~texts.map(str.isascii)).sum()),
    }


# ---------------------------------------------------------------- write

ITEMS_FILE, INTERACTIONS_FILE, USERS_FILE, META_FILE = "items.parquet", "interactions.parquet", "users.parquet", \
    "dataset.json"


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def write(ds: Canonical, out: str | Path) -> Path:
    """Write the dataset folder atomically: on failure nothing is left behind."""
    out = Path(out)
    if out.exists() and not (out / META_FILE).exists() and any(out.iterdir()):
        raise DataError(out, "output folder exists and is not a tcf dataset; choose another --out")
    with atomic_dir(out) as tmp:
        _write_parquet(ds.items, tmp / ITEMS_FILE)
        _write_parquet(ds.interactions, tmp / INTERACTIONS_FILE)
        _write_parquet(ds.users, tmp / USERS_FILE)
        atomic_write_text(tmp / META_FILE, json.dumps(ds.meta, indent=2, ensure_ascii=False) + "\n")
    return out
