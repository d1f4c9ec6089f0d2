"""The chat backend interface: a batch of chat prompts in, one reply per prompt out.

Backends are looked up by name in ``CHAT_BACKENDS`` and imported only when chosen (vllm
needs a GPU and the ``vllm`` extra).  A backend reports each reply through ``on_reply``
as soon as it has it, which is how the response cache is written as the run goes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from tcf.errors import TcfError
from tcf.extensions import CHAT_BACKENDS  # the backends' names live in tcf.extensions


class BackendFailed(TcfError):
    """More prompts than ``zeroshot.max_backend_error_rate`` allows got no reply from the backend: the run's
    metrics would score a dead server, so its results are written marked invalid and the command fails."""


def backend_where(z) -> str:
    """What a failure message names: the server address, or the local model."""
    return z.api_base if z.backend == "openai" and z.api_base else str(z.model)


@dataclass
class Reply:
    text: str | None  # None when the request failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class GenParams:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    seed: int | None = None

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p if self.temperature > 0 else 1.0,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed if self.temperature > 0 else None}


OnReply = Callable[[int, Reply], None]


class ChatBackend(ABC):
    """Subclasses set ``name`` and ``identity`` (model and exact weights / server) when built, and say
    what that identity will be without building (:meth:`identity_for`), as ``Encoder.key_for`` does."""

    name: str
    identity: str
    calls: int = 0  # prompts sent to the model or server (cache hits never reach here)

    @abstractmethod
    def generate(self, prompts: list[list[dict]], params: GenParams, on_reply: OnReply | None = None) -> list[Reply]:
        """One reply per prompt, in input order; failures come back as ``Reply(None, error=...)``."""

    def close(self) -> None:  # noqa: B027 - a no-op unless a backend holds a model
        """Free the model."""

    @classmethod
    def identity_for(cls, z) -> str:
        """The identity a backend built from ``z`` reports, found without loading weights (cache lookups).
        Every registered backend says it; one handed in ready-built (tests) is asked its ``identity``."""
        raise NotImplementedError(f"{cls.__name__} does not say its identity before it is built")


def build_backend(z) -> ChatBackend:
    """The backend a :class:`tcf.run.config.ZeroShotConfig` names."""
    return CHAT_BACKENDS.get(z.backend)(z)


def identity_for(z) -> str:
    """The model identity a backend will report, found without loading weights (for cache lookups)."""
    return CHAT_BACKENDS.get(z.backend).identity_for(z)  # unknown names and missing packages fail here
