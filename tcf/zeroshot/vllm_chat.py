"""vLLM offline chat generation (``LLM.chat``) for high throughput on GPUs.  ``pip install 'tcf[vllm]'``.

The model is resolved exactly as for the hf backend (zoo names, folders, GGUF files
converted once), so both backends generate from the same weights.
"""

from __future__ import annotations

import os

from tcf.devices import VLLM_DTYPES
from tcf.zeroshot.backend import ChatBackend, GenParams, OnReply, Reply
from tcf.zeroshot.hf_chat import resolve


class VLLMChat(ChatBackend):
    name = "vllm"

    @classmethod
    def identity_for(cls, z) -> str:
        return resolve(z)[1]

    def __init__(self, z, llm=None):
        self.z = z
        source, self.identity = resolve(z)
        if llm is None:
            from vllm import LLM

            llm = LLM(model=str(source), dtype=VLLM_DTYPES.get(z.dtype, "auto"), seed=0,
                      tensor_parallel_size=int(os.environ.get("TCF_VLLM_TP", "1")))
        self.llm = llm
        self.calls = 0

    def sampling(self, params: GenParams):
        from vllm import SamplingParams

        return SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                              seed=params.seed)

    def generate(self, prompts, params, on_reply: OnReply | None = None) -> list[Reply]:
        outputs = self.llm.chat(prompts, self.sampling(params), use_tqdm=False)
        replies = [Reply(o.outputs[0].text, len(o.prompt_token_ids or []), len(o.outputs[0].token_ids or []))
                   for o in outputs]
        self.calls += len(prompts)
        for i, r in enumerate(replies):
            if on_reply:
                on_reply(i, r)
        return replies

    def close(self) -> None:
        from tcf.encoders.vllm_backend import shutdown

        if self.llm is not None:
            shutdown(self.llm)
        self.llm = None
