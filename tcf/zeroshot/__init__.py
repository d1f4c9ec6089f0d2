"""Zero-shot recommendation with chat LLMs: candidates, prompt templates, backends, parsing, a response cache.

``run_zeroshot(cfg, out)`` runs one ``task: zeroshot`` config (see
:class:`tcf.run.config.ZeroShotConfig`) and writes ``out/results.json`` and
``out/samples.jsonl``.  Backends are looked up in ``CHAT_BACKENDS`` and imported only
when chosen.
"""

from __future__ import annotations

from tcf.zeroshot.backend import CHAT_BACKENDS, ChatBackend, GenParams, Reply, build_backend


def run_zeroshot(cfg, out, *, progress: bool = True, backend=None) -> dict:
    """Run a zero-shot config into ``out``; returns the results dict (also written to ``out/results.json``)."""
    from tcf.zeroshot.runner import run_zeroshot as run

    return run(cfg, out, progress=progress, backend=backend)


__all__ = ["CHAT_BACKENDS", "ChatBackend", "GenParams", "Reply", "build_backend", "run_zeroshot"]
