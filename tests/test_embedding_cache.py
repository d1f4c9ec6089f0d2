"""The embedding cache: alignment, reuse, refusal of mismatched or damaged entries, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tcf.data import prepare
from tcf.encoders import EncoderSpec, build_encoder
from tcf.encoders.cache import CacheError, read_entry
from tcf.encoders.extract import extract, make_key


@pytest.fixture
def spec(tiny_model):
    return EncoderSpec(model=str(tiny_model), max_tokens=12, batch_size=8)


def test_rows_are_item_ids(tiny_dataset, spec, tmp_path):
    r = extract(tiny_dataset, spec, root=tmp_path, shard_rows=16)
    v = r.entry.vectors
    assert v.shape == (tiny_dataset.n_items + 1, 32)
    assert not v[0].any()  # padding row
    enc = build_encoder(spec)
    texts = tiny_dataset.item_texts()
    rng = np.random.default_rng(0)
    for item in rng.choice(np.arange(1, tiny_dataset.n_items + 1), size=8, replace=False):
        alone = enc.embed([texts[item]]).vectors[0]
        np.testing.assert_allclose(v[item], alone, atol=1e-5, err_msg=f"row {item}")


def test_complete_cache_is_reused_not_recomputed(tiny_dataset, spec, tmp_path):
    first = extract(tiny_dataset, spec, root=tmp_path)
    again = extract(tiny_dataset, spec, root=tmp_path)
    assert first.computed_rows == tiny_dataset.n_items + 1 and again.computed_rows == 0
    assert again.entry.path == first.entry.path
    m = again.entry.manifest
    assert m["key"]["model"].startswith("llama:") and m["dataset"]["fingerprint"] == tiny_dataset.fingerprint
    assert m["n_parameters"] > 0 and m["provenance"]["packages"]["torch"]


def test_key_covers_what_changes_a_vector(tiny_dataset, spec, tmp_path):
    base = make_key(spec, tiny_dataset, kind="pooled", template=None, storage="fp32")
    variants = [spec.__class__(**{**spec.__dict__, **change}) for change in
                ({"pooling": "last"}, {"layer": 2}, {"max_tokens": 8}, {"dtype": "bf16"})]
    keys = [make_key(v, tiny_dataset, kind="pooled", template=None, storage="fp32") for v in variants]
    keys.append(make_key(spec, tiny_dataset, kind="pooled", template="item: {title}", storage="fp32"))
    keys.append(make_key(spec, tiny_dataset, kind="pooled", template=None, storage="fp16"))
    assert len({json.dumps(k, sort_keys=True) for k in [base, *keys]}) == 7
    # batch size and padding side do not change vectors and do not split the cache
    same = spec.__class__(**{**spec.__dict__, "batch_size": 2, "padding_side": "left"})
    assert make_key(same, tiny_dataset, kind="pooled", template=None, storage="fp32") == base


def test_cache_of_other_dataset_or_model_is_refused(tiny_dataset, spec, tmp_path, tiny_models):
    entry = extract(tiny_dataset, spec, root=tmp_path).entry
    other = prepare("synthetic", None, tmp_path / "other", source_options={"n_users": 30, "n_items": 40, "seed": 9,
                                                                            "n_topics": 4, "min_len": 3,
                                                                            "max_len": 6})
    with pytest.raises(CacheError, match="text_fingerprint: cache has"):
        read_entry(entry.path, key=make_key(spec, other, kind="pooled", template=None, storage="fp32"))
    gpt2 = EncoderSpec(model=str(tiny_models["gpt2"]), max_tokens=12)
    with pytest.raises(CacheError, match="model: cache has 'llama:"):
        read_entry(entry.path, key=make_key(gpt2, tiny_dataset, kind="pooled", template=None, storage="fp32"))
    with pytest.raises(CacheError, match="rows"):
        read_entry(entry.path, rows=tiny_dataset.n_items)


def test_corrupted_or_truncated_cache_is_refused(tiny_dataset, spec, tmp_path):
    entry = extract(tiny_dataset, spec, root=tmp_path).entry
    f = entry.path / "vectors.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum does not match"):
        extract(tiny_dataset, spec, root=tmp_path)
    f.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError, match="checksum|truncated"):
        read_entry(entry.path)
    with pytest.raises(CacheError, match="truncated"):
        read_entry(entry.path, verify=False)


def test_incomplete_cache_is_not_read(tiny_dataset, spec, tmp_path):
    entry = extract(tiny_dataset, spec, root=tmp_path, shard_rows=8).entry
    (entry.path / "manifest.json").unlink()
    (entry.path / "shards").mkdir()
    (entry.path / "shards" / "part-00000.json").write_text("{}")
    with pytest.raises(CacheError, match="incomplete"):
        read_entry(entry.path)


def test_token_states_cache(tiny_dataset, tiny_model, tmp_path):
    spec = EncoderSpec(model=str(tiny_model), layer=2, max_tokens=12)
    r = extract(tiny_dataset, spec, root=tmp_path, kind="tokens", shard_rows=16)
    e = r.entry
    assert e.states.shape == (tiny_dataset.n_items + 1, 12, 32) and e.states.dtype == np.float16
    assert e.mask.shape == (tiny_dataset.n_items + 1, 12) and not e.mask[0].any()
    enc = build_encoder(spec)
    item = 7
    ts = enc.token_states([tiny_dataset.item_texts()[item]])
    n = int(ts.mask[0].sum())
    assert e.mask[item].sum() == n
    np.testing.assert_allclose(e.states[item, :n].astype(np.float32), ts.states[0, :n], atol=2e-2)
    assert "pooling" not in e.key and e.key["layer"] == 2



def test_token_states_beyond_fp16_range_are_kept_in_fp32(tiny_dataset, tiny_model, tmp_path):
    """Gemma's residual stream reaches ~1e5: stored as fp16 it became inf and fine-tuning trained only NaN.
    The default (auto) keeps such states in fp32; explicit fp16 storage refuses them."""
    import torch

    from tcf.errors import ConfigError

    spec = EncoderSpec(model=str(tiny_model), layer=0, max_tokens=12)  # layer 0: the embedding output
    big = build_encoder(spec)
    with torch.no_grad():
        big.model.get_input_embeddings().weight.mul_(1e6)
    e = extract(tiny_dataset, spec, root=tmp_path / "big", kind="tokens", encoder=big, shard_rows=16).entry
    assert e.key["storage"] == "auto" and e.states.dtype == np.float32
    assert np.isfinite(e.states).all() and np.abs(e.states).max() > 65504
    with pytest.raises(ConfigError, match="exceed fp16's range"):
        extract(tiny_dataset, spec, root=tmp_path / "fp16", kind="tokens", encoder=big, storage="fp16")
    small = extract(tiny_dataset, spec, root=tmp_path / "small", kind="tokens", shard_rows=16).entry
    assert small.states.dtype == np.float16  # values in range: auto stores what fp16 did
    with torch.no_grad():
        big.model.get_input_embeddings().weight[:] = float("nan")
    for kind, storage in (("tokens", "auto"), ("pooled", "fp32")):
        with pytest.raises(ConfigError, match="produced NaN or inf"):
            extract(tiny_dataset, spec, root=tmp_path / f"nan-{kind}", kind=kind, encoder=big, storage=storage)

CHILD = """
import sys, time
from tcf.data import load_dataset
from tcf.encoders import EncoderSpec
from tcf.encoders.extract import extract
from tcf.encoders.hf import HFEncoder
slow = HFEncoder.embed
def embed(self, texts):
    time.sleep(0.4)
    return slow(self, texts)
HFEncoder.embed = embed
extract(load_dataset(sys.argv[1]), EncoderSpec(model=sys.argv[2], max_tokens=12, batch_size=8), root=sys.argv[3],
        shard_rows=4)
"""


def test_kill_9_then_rerun_resumes_and_matches(tiny_dataset, spec, tmp_path):
    root = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_dataset.path), spec.model, str(root)],
                             stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        done = list(root.glob("*/shards/part-*.json"))
        if len(done) >= 3 or child.poll() is not None:
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = sorted(root.glob("*/shards/part-*.json"))
    assert len(done) >= 3, child.stderr.read().decode()[-2000:]
    # damage one finished shard: it must be recomputed, not used
    victim = done[0].with_name(done[0].name.replace(".json", ".vectors.npy"))
    victim.write_bytes(victim.read_bytes()[:-7])
    resumed = extract(tiny_dataset, spec, root=root, shard_rows=4)
    assert resumed.reused_shards == len(done) - 1
    clean = extract(tiny_dataset, spec, root=tmp_path / "clean", shard_rows=4)
    np.testing.assert_array_equal(np.asarray(resumed.entry.vectors), np.asarray(clean.entry.vectors))
    assert resumed.entry.manifest["files"]["vectors"]["sha256"] == clean.entry.manifest["files"]["vectors"]["sha256"]
    assert not (resumed.entry.path / "shards").exists()


def _child(tiny_dataset, spec, root):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_dataset.path), spec.model, str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_job_waits_while_another_holds_the_entry(tiny_dataset, spec, tmp_path):
    """Two shards of a sweep extracting the same entry once wrote the same temporary files, and one recorded
    the hash of a file the other had just truncated: the entry then failed its checksum forever."""
    from tcf.encoders.cache import entry_path
    from tcf.encoders.extract import LOCK_FILE
    from tcf.fsutil import file_lock

    root = tmp_path / "shared"
    path = entry_path(root, make_key(spec, tiny_dataset, kind="pooled", template=None, storage="fp32"))
    with file_lock(path / LOCK_FILE):
        child = _child(tiny_dataset, spec, root)
        lines = iter(child.stdout.readline, "")  # ends when the child exits
        said = next((line for line in lines if "waiting for another process extracting into" in line), None)
        assert said is not None, child.stderr.read()[-2000:]  # it exited without waiting for the lock
        time.sleep(1)
        assert child.poll() is None and not (path / "manifest.json").exists() and not (path / "shards").exists()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    assert read_entry(path).manifest["rows"] == tiny_dataset.n_items + 1


@pytest.mark.slow
def test_two_jobs_extracting_one_entry_at_once_leave_a_valid_entry(tiny_dataset, spec, tmp_path):
    root = tmp_path / "shared"
    children = [_child(tiny_dataset, spec, root) for _ in range(2)]
    for c in children:
        _, err = c.communicate(timeout=180)
        assert c.returncode == 0, err[-2000:]
    both = read_entry(next(p for p in root.iterdir() if p.is_dir()))  # verifies every file's sha256
    clean = extract(tiny_dataset, spec, root=tmp_path / "clean", shard_rows=4).entry
    np.testing.assert_array_equal(np.asarray(both.vectors), np.asarray(clean.vectors))


def test_template_changes_texts_and_key(tiny_dataset, spec, tmp_path):
    a = extract(tiny_dataset, spec, root=tmp_path).entry
    b = extract(tiny_dataset, spec, root=tmp_path, template="item: {title}").entry
    assert a.path != b.path
    assert not np.allclose(np.asarray(a.vectors[1:]), np.asarray(b.vectors[1:]))


@pytest.mark.slow
def test_torchrun_two_processes_shard_and_merge(tiny_dataset, spec, tmp_path):
    """torchrun with 2 CPU processes (gloo) splits the shards and rank 0 merges them."""
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", "29533", "-m", "tcf.cli", "extract",
           "--dataset", str(tiny_dataset.path), "--model", spec.model, "--max-tokens", "12", "--batch-size", "8",
           "--shard-rows", "8", "--cache-root", str(tmp_path / "dist")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    dist = read_entry(next((tmp_path / "dist").iterdir()))
    assert dist.manifest["world_size"] == 2
    single = extract(tiny_dataset, spec, root=tmp_path / "single", shard_rows=8)
    np.testing.assert_array_equal(np.asarray(dist.vectors), np.asarray(single.entry.vectors))
