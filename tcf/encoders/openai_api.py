"""Any OpenAI-compatible ``/v1/embeddings`` server: vLLM serve, TEI, llama.cpp, hosted APIs.

Pooling, layer and precision are the server's: the cache key records them as
``"server"``, and the model name plus the server address identify the vectors.
Requests run ``concurrency`` at a time; each is retried on 429 / 5xx / timeouts /
malformed JSON with backoff (see :mod:`tcf.http`).  A request that still fails, or
answers with vectors that are not embeddings (empty, NaN), fails the whole ``embed``
call: the extraction writes no shard for it, so a dead or broken server never becomes
a cache entry, and the shards already complete stay for the rerun.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tcf.encoders.base import Embedded, Encoder, EncoderSpec, encoder_key
from tcf.errors import ConfigError
from tcf.http import RetryPolicy, ServerError, api_key, post_json


class OpenAIEncoder(Encoder):
    @classmethod
    def key_for(cls, spec: EncoderSpec) -> dict:
        if not spec.api_base:
            raise ConfigError("backend openai needs encoder.api_base, e.g. http://127.0.0.1:8000/v1")
        key = encoder_key(spec, f"openai:{spec.api_base.rstrip('/')}:{spec.model}", None)
        key.update(layer="server", pooling="server", dtype="server", quantization="server")
        return key

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self.identity = self.key_for(spec)["model"]
        self.url = spec.api_base.rstrip("/") + "/embeddings"
        self.key_value = api_key(spec.api_key_env)
        self.policy = RetryPolicy(max_retries=spec.max_retries, timeout_s=spec.timeout_s)
        self.dim = 0  # known after the first reply
        self.stats: dict = {}

    def key(self) -> dict:
        return self.key_for(self.spec)

    def _request(self, texts: list[str]) -> tuple[np.ndarray, int]:
        reply = post_json(self.url, {"model": self.spec.model, "input": texts, "encoding_format": "float"},
                          key=self.key_value, policy=self.policy, stats=self.stats)
        try:
            rows = sorted(reply["data"], key=lambda r: r["index"])
            vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ServerError(f"{self.url}: reply is not an embeddings list ({type(e).__name__}: {e})") from None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ServerError(f"{self.url}: asked for {len(texts)} embeddings, got shape {vectors.shape}")
        if vectors.shape[1] == 0 or not np.isfinite(vectors).all():  # JSON NaN parses; a shard must never hold it
            raise ServerError(f"{self.url}: reply is not usable embeddings ({vectors.shape[1]} dimensions, "
                              f"{int((~np.isfinite(vectors)).sum())} non-finite values)")
        return vectors, int((reply.get("usage") or {}).get("prompt_tokens", 0))

    def embed(self, texts: list[str]) -> Embedded:
        texts = list(texts)
        empty = sum(1 for t in texts if not t)
        texts = [t if t else " " for t in texts]  # servers reject empty inputs
        bs = self.spec.batch_size
        batches = [texts[i:i + bs] for i in range(0, len(texts), bs)]
        with ThreadPoolExecutor(max_workers=max(1, self.spec.concurrency)) as pool:
            results = list(pool.map(self._request, batches))
        vectors = np.concatenate([r[0] for r in results]) if results else np.zeros((0, self.dim), np.float32)
        if results:
            if self.dim and vectors.shape[1] != self.dim:
                raise ServerError(f"{self.url}: dimension changed from {self.dim} to {vectors.shape[1]}")
            self.dim = int(vectors.shape[1])
        return Embedded(vectors, sum(r[1] for r in results), 0, empty)
