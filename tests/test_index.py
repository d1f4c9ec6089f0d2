"""FAISS item indexes and the extract / index / neighbors commands."""

from __future__ import annotations

import numpy as np
import pytest

from tcf.cli import main
from tcf.encoders.index import IndexSpec, ItemIndex


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(501, 16)).astype(np.float32)
    v[0] = 0  # padding row
    return v


def exact_neighbors(v, item, k):
    x = v[1:] / np.linalg.norm(v[1:], axis=1, keepdims=True)
    sims = x @ x[item - 1]
    sims[item - 1] = -np.inf
    return (np.argsort(-sims)[:k] + 1).tolist()


def test_flat_is_exact_and_excludes_the_query_item(vectors):
    index = ItemIndex.build(vectors, IndexSpec(type="flat", gpu="no"))
    scores, ids = index.search(vectors[7], k=5, exclude=[7])
    assert ids[0].tolist() == exact_neighbors(vectors, 7, 5)
    assert 0 not in ids[0] and 7 not in ids[0]
    assert np.all(np.diff(scores[0]) <= 1e-6)


@pytest.mark.parametrize("kind, min_recall", [("hnsw", 0.9), ("ivfpq", 0.3)])
def test_approximate_indexes_recall(vectors, kind, min_recall):
    index = ItemIndex.build(vectors, IndexSpec(type=kind, gpu="no"))
    hits = 0
    for item in range(1, 51):
        _, ids = index.search(vectors[item], k=10, exclude=[item])
        hits += len(set(ids[0].tolist()) & set(exact_neighbors(vectors, item, 10)))
    assert hits / 500 >= min_recall


def test_save_and_load_round_trip(vectors, tmp_path):
    index = ItemIndex.build(vectors, IndexSpec(type="hnsw", gpu="no"))
    path = index.save(tmp_path / "index-hnsw.faiss", {"cache_key_hash": "abc"})
    loaded = ItemIndex.load(path, gpu="no")
    assert loaded.meta["cache_key_hash"] == "abc" and loaded.n_items == 500
    a = index.search(vectors[3], k=5)[1]
    b = loaded.search(vectors[3], k=5)[1]
    assert a.tolist() == b.tolist()


def test_bad_queries_and_specs(vectors, tmp_path):
    index = ItemIndex.build(vectors, IndexSpec(gpu="no"))
    with pytest.raises(Exception, match="dimension"):
        index.search(np.zeros(3))
    with pytest.raises(Exception, match="index type"):
        IndexSpec(type="lsh")
    with pytest.raises(Exception, match="no index here"):
        ItemIndex.load(tmp_path / "missing.faiss")


def test_gpu_yes_without_gpu_is_a_clear_error(vectors):
    from tcf.encoders.index import gpu_count

    if gpu_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(Exception, match="sees no GPU"):
        ItemIndex.build(vectors, IndexSpec(gpu="yes"))


def test_cli_extract_index_neighbors(tiny_dataset, tiny_model, tmp_path, capsys):
    common = ["--dataset", str(tiny_dataset.path), "--model", str(tiny_model), "--cache-root", str(tmp_path),
              "--max-tokens", "12"]
    assert main(["extract", *common]) == 0
    out = capsys.readouterr().out
    assert "items/s" in out and "tokens/s" in out and f"cache: {tmp_path}" in out
    assert main(["extract", *common]) == 0
    assert "cache already complete" in capsys.readouterr().out
    assert main(["index", *common, "--type", "hnsw", "--gpu", "no"]) == 0
    assert f"hnsw index over {tiny_dataset.n_items} items" in capsys.readouterr().out
    assert main(["neighbors", *common, "--type", "hnsw", "--gpu", "no", "--item", "3", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("nearest to item 3: ") and len(lines) == 5
    assert main(["neighbors", *common, "--text", "anything at all", "-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["neighbors", *common, "--item", "999"]) == 2
    assert f"--item must be within 1..{tiny_dataset.n_items}" in capsys.readouterr().err


def test_neighbors_uses_the_index_tcf_index_saved(tiny_dataset, tiny_model, tmp_path, capsys, monkeypatch):
    from tcf.encoders import index as index_mod

    common = ["--dataset", str(tiny_dataset.path), "--model", str(tiny_model), "--cache-root", str(tmp_path),
              "--max-tokens", "12", "--gpu", "no"]
    assert main(["neighbors", *common, "--item", "3", "-k", "2"]) == 0
    assert "index: flat, built in memory" in capsys.readouterr().err  # nothing saved yet
    assert main(["index", *common, "--type", "hnsw"]) == 0
    saved = capsys.readouterr().out.strip().rsplit(": ", 1)[1]
    built = []
    monkeypatch.setattr(index_mod.ItemIndex, "build", classmethod(lambda cls, *a, **k: built.append(a) or 1 / 0))
    assert main(["neighbors", *common, "--item", "3", "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert f"index: hnsw, saved at {saved}" in captured.err and not built
    assert captured.out.startswith("nearest to item 3: ") and len(captured.out.strip().splitlines()) == 3
