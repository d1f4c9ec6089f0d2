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
