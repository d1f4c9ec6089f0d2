"""The embedding cache: vectors keyed by everything that changes them, checked on every read.

Layout of one entry (a folder under the cache root, named by model and key hash)::

    manifest.json          key, shapes, dtypes, sha256 of each data file, statistics, provenance
    vectors.npy            pooled: [N + 1, D]             (row i = item_id i; row 0 = padding, zeros)
    states.npy, mask.npy   tokens: [N + 1, T, D], [N + 1, T] hidden states entering layer L-k
    shards/part-00003.*    while extracting: rows [3R, 4R) and a JSON sidecar with their checksums

A shard is written to a temporary file and renamed, then its sidecar the same way, so
a killed extraction resumes from its last complete shard; a shard whose checksum
does not match is recomputed.  When all shards exist they are merged into the final
files and ``manifest.json`` is written last: an entry without a complete manifest is
never read.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tcf.errors import TcfError
from tcf.fsutil import atomic_path, atomic_write_text
from tcf.hashing import file_digest, json_digest

FORMAT_VERSION = 1
KINDS = ("pooled", "tokens")
FILES = {"pooled": ("vectors",), "tokens": ("states", "mask")}


class CacheError(TcfError):
    """A cache that cannot be used: wrong key, wrong shape, corrupted, or incomplete."""


def key_hash(key: dict) -> str:
    return json_digest(key)


def sha256_file(path: Path) -> str:
    return file_digest(path)


def _slug(text: str) -> str:
    name = Path(text.split("@")[0].split(":")[0]).name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40]


def save_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Write an .npy through a temporary file and a rename; returns its sha256."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
        return sha256_file(tmp)


def key_diff(a: dict, b: dict) -> str:
    fields = sorted(set(a) | set(b))
    diffs = [f"{k}: cache has {a.get(k)!r}, wanted {b.get(k)!r}" for k in fields if a.get(k) != b.get(k)]
    return "; ".join(diffs)


@dataclass
class CacheEntry:
    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> dict:
        return self.manifest["key"]

    @property
    def vectors(self) -> np.ndarray:
        return self.arrays["vectors"]

    @property
    def states(self) -> np.ndarray:
        return self.arrays["states"]

    @property
    def mask(self) -> np.ndarray:
        return self.arrays["mask"]


def entry_path(root: str | Path, key: dict) -> Path:
    return Path(root) / f"{_slug(key['model'])}-{key['kind']}-{key_hash(key)[:16]}"


def read_entry(path: Path, *, key: dict | None = None, rows: int | None = None, verify: bool = True,
               mmap: bool = True) -> CacheEntry:
    """Open a complete cache entry, refusing one whose key, shape or checksum does not match."""
    mf = path / "manifest.json"
    if not mf.is_file():
        shards = path / "shards"
        if shards.is_dir() and any(shards.iterdir()):
            raise CacheError(f"{path}: extraction is incomplete (no manifest yet); run `tcf extract` again to resume")
        raise CacheError(f"{path}: no cache here (manifest.json missing)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{mf}: not valid JSON ({e.msg}); delete the folder and extract again") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path}: cache format {manifest.get('format_version')!r}, this tcf reads {FORMAT_VERSION}")
    if key is not None and manifest.get("key") != key:
        raise CacheError(f"{path}: this cache was made with other settings and is not reused: "
                         f"{key_diff(manifest.get('key', {}), key)}")
    if rows is not None and manifest["rows"] != rows:
        raise CacheError(f"{path}: cache has {manifest['rows']} rows, the dataset needs {rows} (N items + padding)")
    arrays = {}
    for name in FILES[manifest["key"]["kind"]]:
        f = path / f"{name}.npy"
        meta = manifest["files"].get(name)
        if not f.is_file() or meta is None:
            raise CacheError(f"{f}: missing from the cache entry")
        if verify and sha256_file(f) != meta["sha256"]:
            raise CacheError(f"{f}: checksum does not match the manifest (corrupted or truncated); "
                             "delete the entry and extract again")
        try:
            arr = np.load(f, mmap_mode="r" if mmap else None)
        except (ValueError, OSError) as e:
            raise CacheError(f"{f}: unreadable ({e}); the file is truncated or corrupted") from None
        if list(arr.shape) != meta["shape"] or str(arr.dtype) != meta["dtype"]:
            raise CacheError(f"{f}: shape {list(arr.shape)} {arr.dtype}, manifest says {meta['shape']} "
                             f"{meta['dtype']}")
        arrays[name] = arr
    first = arrays["vectors" if "vectors" in arrays else "mask"][0]
    if np.any(first != 0):
        raise CacheError(f"{path}: row 0 (padding) is not zero; rows are misaligned with item ids")
    return CacheEntry(path, manifest, arrays)


# ---------------------------------------------------------------- shards

def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def write_shard(shards: Path, index: int, start: int, arrays: dict[str, np.ndarray], stats: dict) -> None:
    shards.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, arr in arrays.items():
        digest = save_npy_atomic(shards / f"{shard_name(index)}.{name}.npy", arr)
        files[name] = {"sha256": digest, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    meta = {"index": index, "start": start, "end": start + len(next(iter(arrays.values()))), "files": files,
            **stats}
    atomic_write_text(shards / f"{shard_name(index)}.json", json.dumps(meta, indent=1))


def valid_shard(shards: Path, index: int, kind: str) -> dict | None:
    """The sidecar of a shard whose files exist and match their checksums, else None (and the bad files go)."""
    side = shards / f"{shard_name(index)}.json"
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        for name in FILES[kind]:
            f = shards / f"{shard_name(index)}.{name}.npy"
            if not f.is_file() or sha256_file(f) != meta["files"][name]["sha256"]:
                raise ValueError(f"{f.name} does not match its checksum")
    except (ValueError, KeyError, json.JSONDecodeError):
        for f in shards.glob(f"{shard_name(index)}.*"):
            f.unlink(missing_ok=True)
        return None
    return meta


def _auto_dtype(parts: list[np.ndarray]) -> np.dtype:
    """Storage "auto": float16 when every finite value of a float array fits its range (the values are then
    stored rounded to fp16, as with storage fp16), else the shards' own float32; other arrays unchanged."""
    if parts[0].dtype.kind != "f":
        return parts[0].dtype
    fp16_max = float(np.finfo(np.float16).max)
    for part in parts:
        for lo in range(0, len(part), 256):
            chunk = np.asarray(part[lo:lo + 256])
            if np.abs(chunk[np.isfinite(chunk)], dtype=np.float32).max(initial=0.0) > fp16_max:
                return parts[0].dtype
    return np.dtype(np.float16)


def merge_shards(path: Path, key: dict, n_shards: int, rows: int, extra: dict) -> CacheEntry:
    """Concatenate all shards into the final files, then write the manifest (last)."""
    shards = path / "shards"
    kind = key["kind"]
    metas = [json.loads((shards / f"{shard_name(i)}.json").read_text()) for i in range(n_shards)]
    files = {}
    for name in FILES[kind]:
        parts = [np.load(shards / f"{shard_name(i)}.{name}.npy", mmap_mode="r") for i in range(n_shards)]
        shape = (rows, *parts[0].shape[1:])
        dtype = _auto_dtype(parts) if key.get("storage") == "auto" else parts[0].dtype
        with atomic_path(path / f"{name}.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            for meta, part in zip(metas, parts):
                out[meta["start"]:meta["end"]] = part
            out.flush()
            del out
            digest = sha256_file(tmp)
        files[name] = {"sha256": digest, "shape": list(shape), "dtype": str(np.dtype(dtype))}
    totals = {k: sum(m.get(k, 0) for m in metas) for k in ("n_tokens", "n_truncated", "n_empty", "seconds")}
    manifest = {"format_version": FORMAT_VERSION, "key": key, "key_hash": key_hash(key), "rows": rows,
                "files": files, "shards": n_shards, "stats": totals, **extra}
    atomic_write_text(path / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(shards, ignore_errors=True)
    return read_entry(path, key=key, rows=rows)
