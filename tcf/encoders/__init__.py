"""Item encoders: backends behind one interface, the embedding cache, and FAISS indexes.

Backends are looked up by name in ``ENCODERS`` (listed in :mod:`tcf.extensions`) and imported only when chosen.
"""

from __future__ import annotations

from tcf.encoders.base import Embedded, Encoder, EncoderSpec, TokenStates
from tcf.extensions import ENCODERS


def build_encoder(spec: EncoderSpec) -> Encoder:
    return ENCODERS.get(spec.backend)(spec)


__all__ = ["ENCODERS", "Embedded", "Encoder", "EncoderSpec", "TokenStates", "build_encoder"]
