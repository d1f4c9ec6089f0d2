"""The encoder interface: texts in, one vector per text out (and, for top-k fine-tuning,
token-level hidden states at a layer).

An encoder's :meth:`Encoder.key` lists everything about it that changes a vector;
the embedding cache is keyed by it (plus the text template and the dataset's text
fingerprint), so two encoders with equal keys are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from tcf.errors import ConfigError

DTYPES = ("fp32", "bf16", "fp16")
QUANTIZATIONS = (None, "int8", "int4")


@dataclass(frozen=True)
class EncoderSpec:
    """How to turn item text into vectors.  One field per choice that matters."""

    model: str = "minilm-l6"  # zoo short name, hub name, local folder, or a .gguf file
    backend: str = "hf"  # hf | openai | deepspeed | vllm
    revision: str | None = None  # hub revision (commit, tag)
    layer: int = -1  # index into the model's hidden states: 0 = embeddings, -1 = final output
    pooling: str = "mean"  # mean | last | cls
    normalize: bool = False  # L2-normalise vectors when read (a separate step; not part of the cache key)
    max_tokens: int = 64  # longer texts are truncated (and counted)
    dtype: str = "fp32"  # fp32 | bf16 | fp16: weights and activations
    quantization: str | None = None  # None | int8 | int4 (nf4), bitsandbytes
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_map: str | None = None  # accelerate sharding across devices, e.g. "auto"
    batch_size: int = 64  # halves automatically on out-of-memory
    padding_side: str = "right"  # right | left; pooling and positions are correct under both
    # OpenAI-compatible servers (backend: openai)
    api_base: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from a file
    timeout_s: float = 60.0
    max_retries: int = 5
    concurrency: int = 4  # requests in flight at once
    # DeepSpeed (backend: deepspeed)
    zero_stage: int = 0  # 0: init_inference; 3: ZeRO-3 parameter partitioning
    offload: bool = False  # ZeRO-3: keep the partitioned weights in CPU memory

    def __post_init__(self):
        from tcf.extensions import POOLINGS

        POOLINGS.check(self.pooling, "encoder.pooling")
        if self.dtype not in DTYPES:
            raise ConfigError(f"encoder.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"encoder.quantization must be one of {list(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.max_tokens < 1 or self.batch_size < 1:
            raise ConfigError("encoder.max_tokens and encoder.batch_size must be >= 1")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"encoder.padding_side must be left or right, got {self.padding_side!r}")


@dataclass
class Embedded:
    vectors: np.ndarray  # [n, d] float32, in the order of the input texts
    n_tokens: int  # real (non-padding) tokens processed
    n_truncated: int  # texts cut at max_tokens
    n_empty: int = 0  # texts with no token at all (embedded as a single padding token)


@dataclass
class TokenStates:
    states: np.ndarray  # [n, max_tokens, d], right-padded with zeros
    mask: np.ndarray  # [n, max_tokens] int8, 1 = real token
    n_truncated: int


def encoder_key(spec: EncoderSpec, identity: str, layer_index: int | None) -> dict:
    return {"backend": spec.backend, "model": identity, "layer": spec.layer if layer_index is None else layer_index,
            "pooling": spec.pooling, "max_tokens": spec.max_tokens, "dtype": spec.dtype,
            "quantization": spec.quantization}


class Encoder(ABC):
    """Texts -> vectors.  Subclasses set ``identity``, ``dim`` and ``num_layers`` when built."""

    spec: EncoderSpec
    identity: str  # the model and the exact weights (revision or file hash)
    dim: int
    num_layers: int | None = None
    layer_index: int | None = None  # the resolved (non-negative) hidden-state index, where it applies

    @classmethod
    @abstractmethod
    def key_for(cls, spec: EncoderSpec) -> dict:
        """The cache key fields of ``spec``, found without loading the model (hashes and configs only)."""

    def key(self) -> dict:
        """Everything about this encoder that changes a vector."""
        return encoder_key(self.spec, self.identity, self.layer_index)

    @abstractmethod
    def embed(self, texts: list[str]) -> Embedded:
        """One pooled fp32 vector per text, in input order."""

    def token_states(self, texts: list[str]) -> TokenStates:
        """Token-level hidden states at ``layer`` (for top-k fine-tuning caches)."""
        raise ConfigError(f"backend {self.spec.backend!r} does not give token-level hidden states; use backend hf")

    def close(self) -> None:  # noqa: B027 - a no-op unless a backend holds a model
        """Free the model (GPU memory); the encoder is unusable afterwards."""
