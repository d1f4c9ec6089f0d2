"""FAISS indexes over a cache's item vectors: ``flat`` (exact inner product), ``hnsw``, ``ivfpq``.

Row 0 (padding) is never indexed: the index holds items 1..N and search returns item
ids.  Vectors are L2-normalised by default, so inner product is cosine similarity.
faiss-gpu is used when it is installed and a GPU is present (``gpu="auto"``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tcf.encoders.pooling import l2_normalize
from tcf.errors import ConfigError, TcfError
from tcf.fsutil import atomic_path, atomic_write_text

INDEX_TYPES = ("flat", "hnsw", "ivfpq")


@dataclass(frozen=True)
class IndexSpec:
    type: str = "flat"
    normalize: bool = True  # cosine similarity through inner product
    hnsw_m: int = 32
    ef_search: int = 128
    nlist: int | None = None  # ivf cells; default from the catalogue size
    pq_m: int | None = None  # sub-quantisers; default: a divisor of the dimension
    pq_bits: int = 8
    nprobe: int = 16
    gpu: str = "auto"  # auto | yes | no

    def __post_init__(self):
        if self.type not in INDEX_TYPES:
            raise ConfigError(f"index type must be one of {list(INDEX_TYPES)}, got {self.type!r}")
        if self.gpu not in ("auto", "yes", "no"):
            raise ConfigError(f"index gpu must be auto, yes or no, got {self.gpu!r}")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise TcfError("FAISS is not installed: pip install faiss-cpu (or faiss-gpu, see the README)") from None
    return faiss


def gpu_count() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _ivfpq_params(spec: IndexSpec, n: int, d: int) -> tuple[int, int, int]:
    nlist = spec.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    pq_m = spec.pq_m or next(m for m in (32, 16, 8, 4, 2, 1) if d % m == 0 and m <= max(1, d // 4))
    if d % pq_m:
        raise ConfigError(f"index pq_m={pq_m} must divide the vector dimension {d}")
    bits = min(spec.pq_bits, max(1, int(math.log2(max(n, 2)))))  # k-means needs >= 2**bits points
    return nlist, pq_m, bits


class ItemIndex:
    """A FAISS index over items 1..N with search by vector, item id or text."""

    def __init__(self, index, spec: IndexSpec, n_items: int, dim: int, meta: dict | None = None):
        self.index, self.spec, self.n_items, self.dim = index, spec, n_items, dim
        self.meta = meta or {}

    @classmethod
    def build(cls, vectors: np.ndarray, spec: IndexSpec = IndexSpec()) -> ItemIndex:
        """``vectors`` is a cache matrix: row i = item i, row 0 = padding (skipped)."""
        faiss = _faiss()
        x = np.ascontiguousarray(vectors[1:], dtype=np.float32)
        n, d = x.shape
        if n == 0:
            raise ConfigError("no items to index")
        if spec.normalize:
            x = np.ascontiguousarray(l2_normalize(x), dtype=np.float32)
        params = {}
        if spec.type == "flat":
            index = faiss.IndexFlatIP(d)
        elif spec.type == "hnsw":
            index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = spec.ef_search
        else:
            nlist, pq_m, bits = _ivfpq_params(spec, n, d)
            params = {"nlist": nlist, "pq_m": pq_m, "pq_bits": bits}
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, bits, faiss.METRIC_INNER_PRODUCT)
        use_gpu = spec.gpu == "yes" or (spec.gpu == "auto" and gpu_count() > 0)
        if use_gpu:
            if gpu_count() == 0:
                raise TcfError("index gpu=yes but faiss sees no GPU (is faiss-gpu installed?)")
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        if not index.is_trained:
            index.train(x)
        index.add(x)
        if spec.type == "ivfpq":
            space = faiss.GpuParameterSpace() if use_gpu else faiss.ParameterSpace()
            space.set_index_parameter(index, "nprobe", spec.nprobe)
        return cls(index, spec, n, d, {"params": params, "gpu": use_gpu})

    def search(self, queries: np.ndarray, k: int = 10, exclude: list[int] | None = None):
        """-> (scores [q, k], item_ids [q, k]); ``exclude`` drops one item id per query (the query item)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ConfigError(f"query dimension {q.shape[1]} does not match the index ({self.dim})")
        if self.spec.normalize:
            q = np.ascontiguousarray(l2_normalize(q), dtype=np.float32)
        extra = 1 if exclude is not None else 0
        scores, labels = self.index.search(q, min(k + extra, self.n_items))
        ids = labels + 1  # row r of the index is item r + 1; -1 (no result) becomes 0
        if exclude is None:
            return scores[:, :k], ids[:, :k]
        out_s, out_i = np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        for r, item in enumerate(exclude):
            keep = ids[r] != item
            s, i = scores[r][keep][:k], ids[r][keep][:k]
            out_s[r, :len(s)], out_i[r, :len(i)] = s, i
        return out_s, out_i

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        faiss = _faiss()
        path = Path(path)
        index = faiss.index_gpu_to_cpu(self.index) if self.meta.get("gpu") else self.index
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        info = {"spec": asdict(self.spec), "n_items": self.n_items, "dim": self.dim, **self.meta, **(meta or {})}
        atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, *, gpu: str = "auto") -> ItemIndex:
        faiss = _faiss()
        path = Path(path)
        side = path.with_suffix(".json")
        if not path.is_file() or not side.is_file():
            raise TcfError(f"{path}: no index here (build one with `tcf index`)")
        info = json.loads(side.read_text())
        index = faiss.read_index(str(path))
        if index.ntotal != info["n_items"] or index.d != info["dim"]:
            raise TcfError(f"{path}: index holds {index.ntotal} x {index.d}, its sidecar says "
                           f"{info['n_items']} x {info['dim']}")
        spec = IndexSpec(**{**info["spec"], "gpu": gpu})
        on_gpu = gpu == "yes" or (gpu == "auto" and gpu_count() > 0)
        if on_gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        meta = {k: v for k, v in info.items() if k not in ("spec", "n_items", "dim")}
        meta["gpu"] = on_gpu
        return cls(index, spec, info["n_items"], info["dim"], meta)


def index_path(entry_path: str | Path, spec: IndexSpec) -> Path:
    """Where the index of ``spec`` over the cache entry at ``entry_path`` lives (beside its vectors)."""
    return Path(entry_path) / f"index-{spec.type}{'' if spec.normalize else '-ip'}.faiss"


def saved_index(entry, *, type: str | None = None, normalize: bool = True,
                gpu: str = "auto") -> tuple[ItemIndex, Path] | None:
    """The index saved beside a cache entry (by ``tcf index``, or a sweep's exact one) and its path:
    of ``type``, or with none given the most recently built, so that ``tcf neighbors`` searches what
    ``tcf index`` made.  None when there is none; one built over other vectors is refused."""
    paths = [index_path(entry.path, IndexSpec(type=t, normalize=normalize)) for t in ([type] if type else INDEX_TYPES)]
    paths = [p for p in paths if p.is_file() and p.with_suffix(".json").is_file()]
    if not paths:
        return None
    path = max(paths, key=lambda p: p.stat().st_mtime_ns)
    index = ItemIndex.load(path, gpu=gpu)
    if index.meta.get("cache_key_hash") != entry.manifest["key_hash"]:
        raise ConfigError(f"{path} was built over another cache; rebuild it with `tcf index`")
    return index, path


def cached_index(entry, spec: IndexSpec = IndexSpec(), *, gpu: str = "auto") -> ItemIndex:
    """The saved index over a cache entry, built and saved first if there is none (or it was built over
    other vectors: the sidecar's ``cache_key_hash`` is checked)."""
    path = index_path(entry.path, spec)
    key_hash = entry.manifest["key_hash"]
    if path.is_file() and path.with_suffix(".json").is_file():
        index = ItemIndex.load(path, gpu=gpu)
        if index.meta.get("cache_key_hash") == key_hash:
            return index
    index = ItemIndex.build(np.asarray(entry.vectors), spec)
    index.save(path, {"cache_key_hash": key_hash})
    return index

