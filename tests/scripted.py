"""Scripted chat backends for zero-shot tests: replies decided by the test, no model."""

from __future__ import annotations

import re


class ReverseRanker:
    """A scripted chat backend: ranks the presented candidates in reverse order, always in the format."""

    name, identity, calls = "scripted", "scripted:reverse", 0

    def generate(self, prompts, params, on_reply=None):
        from tcf.zeroshot.backend import Reply

        replies = []
        for i, messages in enumerate(prompts):
            numbers = re.findall(r"^\[(\d+)\]", messages[-1]["content"], re.MULTILINE)
            replies.append(Reply(", ".join(reversed(numbers)), 50, 10))
            self.calls += 1
            if on_reply is not None:
                on_reply(i, replies[-1])
        return replies

    def close(self):
        pass


def target_in_prompt(ds, cands: list[str], prompt: str) -> str | None:
    """The title of the target of the user whose last three history items the prompt shows (numbered as the
    test prompts show them), when that title is among the candidates; None when no user matches."""
    texts = ds.item_texts()
    for u in range(1, ds.n_users + 1):
        seq = ds.sequence(u)
        hist = "\n".join(f"{i}. {texts[x]}" for i, x in enumerate(seq[:-1][-3:], start=1))
        if hist in prompt and texts[seq[-1]] in cands:
            return texts[seq[-1]]
    return None
