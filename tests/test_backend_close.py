"""Backends that tcf builds itself are closed when it is done with them: vLLM's engine runs in child processes
that outlive a dropped LLM and keep the model's memory (found running real vLLM on CPU, benchmarks/README.md);
a backend passed in by the caller is the caller's to close."""

from __future__ import annotations

from scripted import ReverseRanker
from tcf.encoders import EncoderSpec
from tcf.encoders.extract import extract
from tcf.encoders.hf import HFEncoder
from tcf.experiments.config import load_config
from tcf.zeroshot import run_zeroshot


class ClosingRanker(ReverseRanker):
    closed = 0

    def close(self):
        ClosingRanker.closed += 1


def test_a_chat_backend_built_by_the_run_is_closed_and_a_given_one_is_not(tiny_dataset, tmp_path, monkeypatch):
    import tcf.zeroshot.runner as runner

    monkeypatch.setattr(runner, "build_backend", lambda z: ClosingRanker())
    common = [f"data.dataset={tiny_dataset.path}", f"cache_root={tmp_path / 'cache'}", "task=zeroshot",
              "zeroshot.protocol=rank", "zeroshot.n_candidates=5", "zeroshot.limit=6", "zeroshot.history_len=4",
              "zeroshot.use_cache=false", "eval.bootstrap=0"]
    run_zeroshot(load_config(None, common), tmp_path / "built", progress=False)
    assert ClosingRanker.closed == 1
    given = ClosingRanker()
    run_zeroshot(load_config(None, common), tmp_path / "given", progress=False, backend=given)
    assert ClosingRanker.closed == 1


def test_an_encoder_built_by_extraction_is_closed(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    closed = []
    monkeypatch.setattr(HFEncoder, "close", lambda self: closed.append(self))
    spec = EncoderSpec(model=str(tiny_model), max_tokens=12, batch_size=8)
    extract(tiny_dataset, spec, root=tmp_path / "a")
    assert len(closed) == 1
    mine = HFEncoder(spec)
    extract(tiny_dataset, spec, root=tmp_path / "b", encoder=mine)
    assert len(closed) == 1  # the caller's encoder stays open
