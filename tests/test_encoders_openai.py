"""The openai backend against a real HTTP server on 127.0.0.1 replaying scripted replies and faults."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from fakeserver import FakeServer, text_vector
from tcf.encoders import EncoderSpec, build_encoder
from tcf.encoders.extract import extract
from tcf.errors import ConfigError
from tcf.http import ServerError

TEXTS = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat"]


def spec(url, **kw):
    return EncoderSpec(backend="openai", model="fake-embed", api_base=url, batch_size=2, max_retries=3,
                       timeout_s=2.0, **kw)


def test_vectors_in_input_order_and_key_from_environment(monkeypatch):
    monkeypatch.setenv("TCF_TEST_KEY", "sk-test")
    with FakeServer() as srv:
        enc = build_encoder(spec(srv.url, api_key_env="TCF_TEST_KEY"))
        out = enc.embed(TEXTS)
    np.testing.assert_allclose(out.vectors, np.array([text_vector(t) for t in TEXTS]), atol=1e-6)
    assert len(srv.requests) == 3 and all(r["auth"] == "Bearer sk-test" for r in srv.requests)
    assert srv.requests[0]["body"]["model"] == "fake-embed" and out.n_tokens == 8  # words: 2 + 1 + 2 + 2 + 1
    assert enc.key()["pooling"] == "server" and enc.key()["model"] == f"openai:{srv.url}:fake-embed"


def test_no_key_means_no_authorization_header(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeServer() as srv:
        build_encoder(spec(srv.url)).embed(TEXTS[:1])
    assert srv.requests[0]["auth"] is None


@pytest.mark.parametrize("fault", [500, 503, 429, "malformed", ("sleep", 2.5)])
def test_transient_faults_are_retried(fault):
    with FakeServer(script=[fault]) as srv:
        enc = build_encoder(spec(srv.url, concurrency=1))
        enc.policy = enc.policy.__class__(max_retries=3, backoff_s=0.01, timeout_s=1.0)
        out = enc.embed(TEXTS[:2])
    np.testing.assert_allclose(out.vectors[1], text_vector(TEXTS[1]), atol=1e-6)
    assert enc.stats["retries"] == 1


def test_bounded_retries_then_clear_error():
    with FakeServer(script=[500] * 10) as srv:
        enc = build_encoder(spec(srv.url, concurrency=1))
        enc.policy = enc.policy.__class__(max_retries=2, backoff_s=0.01)
        with pytest.raises(ServerError, match="no usable reply after 3 attempts; last: HTTP 500"):
            enc.embed(TEXTS[:2])
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried():
    with FakeServer(script=[400]) as srv:
        with pytest.raises(ServerError, match="HTTP 400"):
            build_encoder(spec(srv.url)).embed(TEXTS[:1])
    assert len(srv.requests) == 1


def test_wrong_reply_shape_is_an_error():
    with FakeServer(script=[{"data": [{"index": 0, "embedding": [1.0, 2.0]}]}]) as srv:
        with pytest.raises(ServerError, match="asked for 2 embeddings"):
            build_encoder(spec(srv.url)).embed(TEXTS[:2])


def test_dead_server_loses_no_finished_shard(tiny_dataset, tmp_path):
    """The server fails mid-extraction: finished shards stay; the rerun asks only for the rest."""
    with FakeServer(script=["ok", "ok"] + [500] * 50) as srv:
        port = srv.port
        with pytest.raises(ServerError):
            extract(tiny_dataset, spec(srv.url, concurrency=1), root=tmp_path, shard_rows=4)
    assert len(list(tmp_path.glob("*/shards/part-*.json"))) == 1  # rows 0-3: requests of 2 and 1 texts
    with FakeServer(port=port) as srv:  # the server is back, at the same address (part of the cache key)
        r = extract(tiny_dataset, spec(srv.url, concurrency=1), root=tmp_path, shard_rows=4)
    assert r.reused_shards == 1
    assert sum(len(q["body"]["input"]) for q in srv.requests) == tiny_dataset.n_items - 3
    texts = tiny_dataset.item_texts()
    np.testing.assert_allclose(r.entry.vectors[1:], [text_vector(t) for t in texts[1:]], atol=1e-6)


def test_missing_api_base():
    with pytest.raises(ConfigError, match="api_base"):
        build_encoder(EncoderSpec(backend="openai", model="m"))


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def espec(url, **kw):
    return EncoderSpec(backend="openai", model="fake-embed", api_base=url, batch_size=4, max_retries=0,
                       timeout_s=2.0, **kw)


def no_entry(root) -> bool:
    return not list(root.rglob("manifest.json")) and not list(root.rglob("*.npy"))


def test_extraction_against_a_dead_server_leaves_no_cache_entry(tiny_dataset, tmp_path):
    with pytest.raises(ServerError, match="127.0.0.1"):
        extract(tiny_dataset, espec(f"http://127.0.0.1:{closed_port()}/v1"), root=tmp_path, shard_rows=8)
    assert no_entry(tmp_path)


@pytest.mark.parametrize("bad", [[float("nan"), 1.0], [], None])
def test_a_reply_of_unusable_vectors_is_a_failed_call_not_a_cache_entry(tiny_dataset, tmp_path, bad):
    """HTTP 200 with NaN (JSON allows it through Python), empty or null vectors: not embeddings."""
    reply = {"data": [{"index": i, "embedding": bad} for i in range(4)]}
    with FakeServer(script=[reply] * 20) as srv:  # shard 0: rows 1-8, two requests of 4 texts
        with pytest.raises(ServerError, match="embedding"):
            extract(tiny_dataset, espec(srv.url), root=tmp_path, shard_rows=9)
    assert no_entry(tmp_path)
