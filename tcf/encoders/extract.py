"""Dataset item texts -> a cache entry, in resumable shards, optionally across processes.

Under ``torchrun --nproc-per-node N`` (or several nodes sharing the cache folder),
process r computes shards r, r+N, r+2N, ...; after a barrier, rank 0 merges them.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tcf import __version__
from tcf.data import Dataset
from tcf.devices import init_group
from tcf.encoders import ENCODERS, Encoder, EncoderSpec
from tcf.encoders.cache import (
    FORMAT_VERSION,
    CacheEntry,
    entry_path,
    merge_shards,
    read_entry,
    valid_shard,
    write_shard,
)
from tcf.errors import ConfigError
from tcf.fsutil import file_lock
from tcf.provenance import provenance

# stored precision -> the precision shards are written in. "auto" (the token-state default) writes fp32 shards
# and merges them to fp16 when every value fits fp16's range, else keeps fp32: residual streams of some LMs
# (Gemma's reach ~1e5) overflow fp16 to inf, which trained nothing but NaN.
STORAGE = {"fp32": np.float32, "fp16": np.float16, "auto": np.float32}
FP16_MAX = float(np.finfo(np.float16).max)
LOCK_FILE = ".lock"  # in the entry's folder: held by the job filling the entry


@dataclass
class ExtractReport:
    entry: CacheEntry
    computed_rows: int  # rows embedded by this call (0 when the cache was complete)
    reused_shards: int  # shards found complete from an earlier, interrupted run
    seconds: float  # embedding time of this call (model loading excluded)
    n_tokens: int
    wall_seconds: float  # everything: key, loading, embedding, merging

    @property
    def items_per_s(self) -> float:
        return self.computed_rows / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0


def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        init_group("nccl" if _cuda() else "gloo")
    dist.barrier()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def make_key(spec: EncoderSpec, dataset: Dataset, *, kind: str, template: str | None, storage: str) -> dict:
    if kind not in ("pooled", "tokens"):
        raise ConfigError(f"cache kind must be pooled or tokens, got {kind!r}")
    if storage not in STORAGE:
        raise ConfigError(f"cache storage must be one of {list(STORAGE)}, got {storage!r}")
    template = template or dataset.template
    key = {"format_version": FORMAT_VERSION, "kind": kind, **ENCODERS.get(spec.backend).key_for(spec),
           "template": template, "text_fingerprint": dataset.text_fingerprint(template), "storage": storage}
    if kind == "tokens":
        key.pop("pooling")  # token states do not depend on pooling
    return key


def extract(dataset: Dataset, spec: EncoderSpec, *, root: str | Path = "embeddings_cache", kind: str = "pooled",
            template: str | None = None, storage: str | None = None, shard_rows: int = 1024,
            encoder: Encoder | None = None, progress: bool = False) -> ExtractReport:
    """Embed every item of ``dataset`` into the cache (or find it there) and return the entry."""
    start_time = time.perf_counter()
    storage = storage or ("fp32" if kind == "pooled" else "auto")
    key = make_key(spec, dataset, kind=kind, template=template, storage=storage)
    path = entry_path(root, key)
    rows = dataset.n_items + 1
    rank, world = dist_info()
    if world == 1 and (path / "manifest.json").is_file():  # under torchrun every rank decides after the barrier
        entry = read_entry(path, key=key, rows=rows)
        return ExtractReport(entry, 0, 0, 0.0, 0, time.perf_counter() - start_time)
    # Two jobs filling the same entry at once (two shards of a sweep, two users of a shared cache) would
    # write the same shard and merge files: the first to lock extracts, the other waits and reads it.
    # Under torchrun rank 0 holds the lock for its whole process group.
    lock = file_lock(path / LOCK_FILE,
                     on_wait=lambda: print(f"waiting for another process extracting into {path}", flush=True))
    with lock if rank == 0 else contextlib.nullcontext():
        _barrier(world)  # every rank starts once rank 0 holds the lock
        if (path / "manifest.json").is_file():
            entry = read_entry(path, key=key, rows=rows)
            return ExtractReport(entry, 0, 0, 0.0, 0, time.perf_counter() - start_time)
        built: dict = {}  # the encoder _extract_entry builds is closed here (vLLM's engine outlives a dropped LLM)
        try:
            return _extract_entry(dataset, spec, path, key, rows, kind, storage, shard_rows, encoder, progress, rank,
                                  world, start_time, built)
        finally:
            if built.get("encoder") is not None:
                built["encoder"].close()


def _extract_entry(dataset: Dataset, spec: EncoderSpec, path: Path, key: dict, rows: int, kind: str, storage: str,
                   shard_rows: int, encoder: Encoder | None, progress: bool, rank: int, world: int,
                   start_time: float, built: dict) -> ExtractReport:
    """The body of ``extract`` once this job owns the entry: compute the missing shards, merge on rank 0."""
    texts = dataset.item_texts(key["template"])
    shards = path / "shards"
    n_shards = -(-rows // shard_rows)
    # DeepSpeed (tensor parallel or ZeRO-3) needs every process in every forward pass:
    # all processes run all shards and rank 0 writes them; other backends split the shards
    replicated = spec.backend == "deepspeed"
    mine = list(range(n_shards)) if replicated else [s for s in range(n_shards) if s % world == rank]
    _barrier(world)
    todo = [s for s in mine if valid_shard(shards, s, kind) is None]
    _barrier(world)  # no process writes a shard before every process has its list
    reused = len(mine) - len(todo)
    computed = tokens = 0
    compute_s = 0.0
    if todo:
        if encoder is None:
            encoder = built["encoder"] = ENCODERS.get(spec.backend)(spec)
        have = encoder.key()
        wrong = [k for k in have if k in key and have[k] != key[k]]
        if wrong:
            raise ConfigError(f"the encoder given does not match the cache key in {wrong}")
        bar = _progress(sum(min(shard_rows, rows - s * shard_rows) for s in todo), progress, path)
        for s in todo:
            lo, hi = s * shard_rows, min((s + 1) * shard_rows, rows)
            t0 = time.perf_counter()
            arrays, stats = _compute(encoder, texts, lo, hi, kind, STORAGE[storage])
            _check_range(arrays, storage, spec, path)
            stats["seconds"] = time.perf_counter() - t0
            if rank == 0 or not replicated:
                write_shard(shards, s, lo, arrays, stats)
            computed += hi - lo
            tokens += stats["n_tokens"]
            compute_s += stats["seconds"]
            if bar is not None:
                bar.update(hi - lo)
                bar.set_postfix_str(f"{computed / compute_s:,.0f} items/s, {tokens / compute_s:,.0f} tok/s")
        if bar is not None:
            bar.close()
    _barrier(world)
    if rank == 0:
        entry = _finish(dataset, spec, encoder, path, key, kind, n_shards, rows, world)
    _barrier(world)
    if rank != 0:
        entry = read_entry(path, key=key, rows=rows)
    return ExtractReport(entry, computed, reused, compute_s, tokens, time.perf_counter() - start_time)


def _finish(dataset: Dataset, spec: EncoderSpec, encoder: Encoder | None, path: Path, key: dict, kind: str,
            n_shards: int, rows: int, world: int):
    """Rank 0, every process's shards written: check they are all there, then merge them and write the manifest."""
    extra = {"dim": (encoder.dim if encoder is not None else None), "dataset": {
             "path": str(dataset.path), "fingerprint": dataset.fingerprint, "n_items": dataset.n_items},
             "encoder": asdict(spec), "n_parameters": getattr(encoder, "n_parameters", None),
             "tcf_version": __version__, "provenance": provenance(), "world_size": world}
    for s in range(n_shards):
        if valid_shard(path / "shards", s, kind) is None:
            raise ConfigError(f"{path}: shard {s} is missing after extraction (a process failed?); run again")
    return merge_shards(path, key, n_shards, rows, extra)


def _check_range(arrays: dict, storage: str, spec: EncoderSpec, path: Path) -> None:
    """Non-finite values are never cached (they train nothing but NaN): fp16 overflow is refused naming the way
    out, and NaN or inf from the encoder itself naming the encoder."""
    for name, a in arrays.items():
        if a.dtype.kind != "f" or np.isfinite(a).all():
            continue
        if storage == "fp16" and not np.isnan(a).any():
            raise ConfigError(f"{path}: {spec.model}'s {name} exceed fp16's range (|x| > {FP16_MAX:.0f}) and would be "
                              "stored as inf; extract with storage auto or fp32 (tcf extract --storage auto)")
        rows = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))
        raise ConfigError(f"{path}: {spec.model} produced NaN or inf {name} for {len(rows)} item(s) of this shard "
                          f"(shard rows {rows[:5].tolist()}); nothing was cached for it")


def _compute(encoder: Encoder, texts: list[str], lo: int, hi: int, kind: str, dtype) -> tuple[dict, dict]:
    first = max(lo, 1)  # row 0 is the padding item: zeros, never embedded
    batch = texts[first:hi]
    if kind == "pooled":
        out = encoder.embed(batch) if batch else None
        vectors = np.zeros((hi - lo, encoder.dim), dtype=dtype)
        if out is not None:
            vectors[first - lo:] = out.vectors
        stats = {"n_tokens": out.n_tokens if out else 0, "n_truncated": out.n_truncated if out else 0,
                 "n_empty": out.n_empty if out else 0}
        return {"vectors": vectors}, stats
    ts = encoder.token_states(batch) if batch else None
    T = encoder.spec.max_tokens
    states = np.zeros((hi - lo, T, encoder.dim), dtype=dtype)
    mask = np.zeros((hi - lo, T), dtype=np.int8)
    if ts is not None:
        with np.errstate(over="ignore"):  # an fp16 overflow is refused by _check_range, naming the fix
            states[first - lo:] = ts.states
        mask[first - lo:] = ts.mask
    return {"states": states, "mask": mask}, {"n_tokens": int(mask.sum()),
                                              "n_truncated": ts.n_truncated if ts else 0}


def _progress(total: int, enabled: bool, path: Path):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc=f"extract {path.name}", dynamic_ncols=True)
