"""Item encoders: backends behind one interface, the embedding cache, and FAISS indexes.

Backends are looked up by name in ``ENCODERS`` and imported only when chosen.
"""

from __future__ import annotations

from tcf.encoders.base import Embedded, Encoder, EncoderSpec, TokenStates
from tcf.registry import Entry, Registry

ENCODERS = Registry("encoder backend", {
    "hf": Entry("tcf.encoders.hf:HFEncoder", packages=("transformers",)),
    "openai": Entry("tcf.encoders.openai_api:OpenAIEncoder"),
    "deepspeed": Entry("tcf.encoders.ds:DeepSpeedEncoder", extra="deepspeed", packages=("deepspeed",)),
    "vllm": Entry("tcf.encoders.vllm_backend:VLLMEncoder", extra="vllm", packages=("vllm",)),
})


def build_encoder(spec: EncoderSpec) -> Encoder:
    return ENCODERS.get(spec.backend)(spec)


__all__ = ["ENCODERS", "Embedded", "Encoder", "EncoderSpec", "TokenStates", "build_encoder"]
