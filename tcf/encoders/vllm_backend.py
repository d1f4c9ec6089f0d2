"""vLLM pooling runner for high-throughput extraction on GPUs (``LLM(..., runner="pooling")``, ``llm.embed``).

Texts are tokenised and truncated by the model's Hugging Face tokenizer exactly as in
the hf backend (vLLM's own ``truncate_prompt_tokens`` keeps the *last* tokens), and
sent as token ids, so both backends embed the same tokens.  vLLM pools the final
hidden states only (``layer`` must be -1) with the pooling named in the spec and no
normalisation (a separate step in tcf).  Install with ``pip install 'tcf[vllm]'``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tcf.devices import VLLM_DTYPES
from tcf.encoders.base import Embedded, Encoder, EncoderSpec, encoder_key
from tcf.encoders.hf import describe, load_tokenizer, tokenize
from tcf.errors import ConfigError

VLLM_POOLING = {"mean": "MEAN", "last": "LAST", "cls": "CLS"}
# in the cache key: vectors made before 2 were L2-normalised by vLLM >= 0.32 (its renamed pooler setting was not
# set), so their caches must not be reused
CODE_VERSION = 2


def pooler_kwargs(spec: EncoderSpec) -> dict:
    """The LLM(...) keyword that sets the pooler, under the name this vLLM version uses."""
    from vllm.config import PoolerConfig
    from vllm.engine.arg_utils import EngineArgs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    fields = {f.name for f in dataclasses.fields(PoolerConfig)}
    cfg = {"pooling_type": VLLM_POOLING[spec.pooling]}
    # the pooler's own activation is L2 normalisation for embed models (on by default, and on from a
    # sentence-transformers config): off, so vectors are the raw pooled states as in the hf backend.
    # vLLM renamed ``normalize`` to ``use_activation`` (0.32 rejects ``normalize``).
    if "use_activation" in fields:
        cfg["use_activation"] = False
    elif "normalize" in fields:
        cfg["normalize"] = False
    else:
        raise ConfigError("this vLLM version's PoolerConfig has neither use_activation nor normalize: tcf cannot "
                          "turn its normalisation off")
    for name in ("pooler_config", "override_pooler_config"):
        if name in names:
            return {name: PoolerConfig(**cfg)}
    raise ConfigError("this vLLM version has no pooler_config / override_pooler_config engine argument")


def shutdown(llm) -> None:
    """Stop a ``vllm.LLM``'s engine processes now. vLLM's V1 engine runs in child processes (EngineCore,
    Worker) that dropping the ``LLM`` does not stop while any reference cycle holds it: on CPU they kept
    the model's memory, and a second ``LLM`` in the same process ran beside the first."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if callable(getattr(engine_core, "shutdown", None)):
        engine_core.shutdown()


class VLLMEncoder(Encoder):
    @classmethod
    def key_for(cls, spec: EncoderSpec) -> dict:
        if spec.layer != -1:
            raise ConfigError("backend vllm pools the final output only: use layer -1, or backend hf for other layers")
        if spec.quantization:
            raise ConfigError("backend vllm: bitsandbytes quantization is not wired here; use backend hf")
        if spec.pooling not in VLLM_POOLING:
            raise ConfigError(f"backend vllm pools with {', '.join(VLLM_POOLING)}, not {spec.pooling!r} (item_token "
                              "pooling is for fine-tuned towers); use one of those, or backend hf")
        _, identity, _, _, layer_index = describe(spec)
        return {**encoder_key(spec, identity, layer_index), "code_version": CODE_VERSION}

    def __init__(self, spec: EncoderSpec, llm=None):
        self.key_for(spec)
        source, self.identity, config, self.num_layers, self.layer_index = describe(spec)
        self.spec = spec
        self.tokenizer = load_tokenizer(source, spec)
        from tcf.encoders.hf import text_config

        self.dim = int(text_config(config).hidden_size)
        self.n_parameters = None  # vLLM does not expose its module tree uniformly across versions
        self.llm = None
        if llm is None:  # last: nothing after it can raise, so a built engine is always reachable by close()
            from vllm import LLM

            llm = LLM(model=str(source), runner="pooling", dtype=VLLM_DTYPES[spec.dtype], seed=0,
                      tensor_parallel_size=int(os.environ.get("TCF_VLLM_TP", 1)),
                      max_model_len=max(spec.max_tokens, 16), **pooler_kwargs(spec))
        self.llm = llm

    def embed(self, texts: list[str]) -> Embedded:
        ids, n_trunc, n_empty = tokenize(self.tokenizer, texts, self.spec.max_tokens)
        outputs = self.llm.embed([{"prompt_token_ids": x} for x in ids], use_tqdm=False)
        vectors = np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ConfigError(f"vLLM returned embeddings of shape {vectors.shape}, expected {(len(texts), self.dim)}")
        return Embedded(vectors, int(sum(len(x) for x in ids)), n_trunc, n_empty)

    def close(self) -> None:
        if self.llm is not None:
            shutdown(self.llm)
        self.llm = None
