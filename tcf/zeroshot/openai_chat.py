"""Any OpenAI-compatible ``/v1/chat/completions`` server: vLLM serve, llama.cpp server, hosted APIs.

Requests run ``concurrency`` at a time with bounded retries on timeouts, 429, 5xx and
malformed JSON (:mod:`tcf.http`); the key comes from the environment variable named by
``api_key_env`` only.  Whether a retry happens never depends on the reply's content.
A prompt whose retries run out is reported as failed and the run goes on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed

from tcf.errors import ConfigError
from tcf.http import RetryPolicy, ServerError, api_key, post_json
from tcf.zeroshot.backend import ChatBackend, GenParams, OnReply, Reply


class OpenAIChat(ChatBackend):
    name = "openai"

    def __init__(self, z):
        self.identity = self.identity_for(z)
        self.z = z
        self.url = z.api_base.rstrip("/") + "/chat/completions"
        self.key = api_key(z.api_key_env)
        self.policy = RetryPolicy(max_retries=z.max_retries, timeout_s=z.timeout_s)
        self.stats: dict = {}
        self.calls = 0

    @classmethod
    def identity_for(cls, z) -> str:
        if not z.api_base:
            raise ConfigError("zeroshot.backend openai needs zeroshot.api_base, e.g. http://127.0.0.1:8000/v1")
        return f"openai:{z.api_base.rstrip('/')}:{z.model}" + (f"@{z.revision}" if z.revision else "")

    def _one(self, messages: list[dict], params: GenParams) -> Reply:
        payload = {"model": self.z.model, "messages": messages, "temperature": params.temperature,
                   "top_p": params.top_p, "max_tokens": params.max_new_tokens}
        if params.seed is not None:
            payload["seed"] = params.seed
        try:
            data = post_json(self.url, payload, key=self.key, policy=self.policy, stats=self.stats)
        except ServerError as e:
            return Reply(None, error=str(e))
        try:
            text = data["choices"][0]["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError) as e:
            return Reply(None, error=f"{self.url}: reply is not a chat completion ({type(e).__name__}: {e})")
        usage = data.get("usage") or {}
        return Reply(text or "", int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    def generate(self, prompts, params, on_reply: OnReply | None = None) -> list[Reply]:
        out: list[Reply | None] = [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.z.concurrency) as pool:
            futures = {pool.submit(self._one, p, params): i for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                self.calls += 1
                if on_reply:
                    on_reply(i, out[i])
        return out
