"""Local ``transformers`` generation with the model's chat template: batched, left-padded, greedy by default.

Models resolve as for the encoders (zoo names such as ``smollm2-135m``, local folders,
``.gguf`` files converted once to safetensors, hub names where a hub is reachable).
Prompts are sorted by length so a batch holds similar lengths, generated together with
left padding, and handed back in input order; a batch that runs out of memory is
retried at half size.  A model with no chat template is refused unless
``plain_prompt`` asks for the messages to be joined as plain text.
"""

from __future__ import annotations

from tcf.errors import ConfigError
from tcf.zeroshot.backend import ChatBackend, GenParams, OnReply, Reply


def resolve(z):
    """-> (folder or hub name, identity) for the config's model, shared with the encoders' loading path."""
    from tcf.encoders.base import EncoderSpec
    from tcf.encoders.hf_load import describe

    source, identity, _, _, _ = describe(EncoderSpec(model=z.model, revision=z.revision))
    return source, identity


def plain_text(messages: list[dict]) -> str:
    """The fallback for models without a chat template: role-labelled paragraphs and an open answer."""
    return "".join(f"{m['role'].capitalize()}: {m['content'].strip()}\n\n" for m in messages) + "Assistant:"


class HFChat(ChatBackend):
    name = "hf"

    @classmethod
    def identity_for(cls, z) -> str:
        return resolve(z)[1]

    def __init__(self, z):
        import torch
        from transformers import AutoModelForCausalLM

        from tcf.devices import pick_device, torch_dtype
        from tcf.encoders.base import EncoderSpec
        from tcf.encoders.hf_load import load_tokenizer
        from tcf.encoders.quiet import quiet_transformers

        self.z = z
        self._torch = torch
        source, self.identity = resolve(z)
        self.tokenizer = load_tokenizer(source, EncoderSpec(model=z.model, revision=z.revision, padding_side="left"))
        if not self.tokenizer.chat_template and not z.plain_prompt:
            raise ConfigError(f"model {z.model!r} has no chat template; set zeroshot.plain_prompt: true to send "
                              "the messages as plain text, or use an instruction-tuned (chat) model")
        kw = {"revision": z.revision} if isinstance(source, str) and z.revision else {}
        with quiet_transformers():
            self.model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype(z.dtype), **kw)
        self.model.eval()
        self.device = pick_device(z.device, "zeroshot.device")
        self.model.to(self.device)
        self.batch_size = z.batch_size
        self.calls = 0
        eos = self.model.generation_config.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in self.eos:
            self.eos.append(self.tokenizer.eos_token_id)

    def render(self, messages: list[dict]) -> list[int]:
        """Token ids of one prompt, generation prompt included."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(plain_text(messages), add_special_tokens=True)["input_ids"]

    def _generate(self, ids: list[list[int]], params: GenParams) -> list[tuple[list[int], int]]:
        torch = self._torch
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        kw = {"max_new_tokens": params.max_new_tokens, "do_sample": params.temperature > 0,
                  "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.eos or None}
        if params.temperature > 0:
            kw.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:  # greedy: clear sampling defaults a model's generation config may carry (no warnings)
            kw.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(input_ids=batch["input_ids"].to(self.device),
                                      attention_mask=batch["attention_mask"].to(self.device), **kw)
        new = out[:, batch["input_ids"].shape[1]:].cpu().tolist()
        results = []
        for row in new:
            cut = next((j for j, t in enumerate(row) if t in self.eos), len(row))
            results.append((row[:cut], cut + (cut < len(row))))
        return results

    def generate(self, prompts, params, on_reply: OnReply | None = None) -> list[Reply]:
        from tcf.encoders.hf_load import by_length

        ids = [self.render(p) for p in prompts]
        out: list[Reply | None] = [None] * len(prompts)

        def step(idx):
            gens = self._generate([ids[i] for i in idx], params)
            for i, (tokens, n_generated) in zip(idx, gens):
                out[i] = Reply(self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(ids[i]),
                               n_generated)
                self.calls += 1
                if on_reply:
                    on_reply(i, out[i])

        by_length(self, [len(x) for x in ids], step, "generation batch size")
        return out

    def close(self) -> None:
        self.model = None
