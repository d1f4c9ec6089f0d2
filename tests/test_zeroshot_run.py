"""Zero-shot runs end to end on a tiny dataset: candidates, prompts, metrics against hand-computed values,
the response cache (warm rerun makes no call; kill -9 and resume), the CLI, config errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fakeserver import FakeServer
from scripted import target_in_prompt
from tcf.errors import ConfigError
from tcf.experiments.config import RunConfig, ZeroShotConfig, load_config
from tcf.zeroshot import ChatBackend, Reply, run_zeroshot
from tcf.zeroshot.cache import cache_key, cacheable
from tcf.zeroshot.candidates import Candidates, load_or_build
from tcf.zeroshot.prompts import PromptTemplate, template_path

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path, dataset, **z) -> RunConfig:
    zs = {"protocol": "rank", "n_candidates": 5, "history_len": 3, "limit": 8, "backend": "openai",
          "api_base": "http://127.0.0.1:9/v1", "model": "fake", "max_retries": 0, "timeout_s": 2.0, **z}
    return load_config(None, [f"data.dataset={dataset.path}", f"cache_root={tmp_path / 'cache'}", "task=zeroshot",
                              "eval.bootstrap=50", *[f"zeroshot.{k}={'null' if v is None else v}"
                                                     for k, v in zs.items()]])


class Scripted(ChatBackend):
    """Answers each prompt with ``reply(candidate texts in presented order, prompt)``; counts calls."""

    name, identity = "scripted", "scripted-model"

    def __init__(self, reply):
        self.reply, self.calls = reply, 0

    def generate(self, prompts, params, on_reply=None):
        out = []
        for i, p in enumerate(prompts):
            text = p[-1]["content"]
            cands = [ln.split("] ", 1)[1] for ln in text.splitlines() if ln.startswith("[")]
            out.append(Reply(self.reply(cands, text), 5, 2))
            self.calls += 1
            if on_reply:
                on_reply(i, out[-1])
        return out


def target_first(ds):
    """A perfect recommender that knows each user's target (by looking it up from the history shown)."""
    def reply(cands, prompt):
        target = target_in_prompt(ds, cands, prompt)
        if target is None:
            return ""
        t = cands.index(target) + 1
        return ", ".join(str(i) for i in [t] + [i for i in range(1, len(cands) + 1) if i != t])
    return reply


def test_candidates_are_seeded_outside_history_and_reused(tmp_path, tiny_dataset):
    from tcf.train.data import SeqData

    cfg = config(tmp_path, tiny_dataset, bootstrap=3)
    data = SeqData(tiny_dataset)
    c, path = load_or_build(cfg, tiny_dataset, data)
    assert c.lists.shape == (8, 3, 5) and path.is_file()
    for row, u in enumerate(c.users):
        assert c.targets[row] == tiny_dataset.sequence(u)[-1]
        for b in range(3):
            negs = set(c.lists[row, b].tolist()) - {c.targets[row]}
            assert len(negs) == 4 and not negs & set(tiny_dataset.sequence(u).tolist())
            assert c.lists[row, b, c.target_pos[row, b]] == c.targets[row]
    again, _ = load_or_build(cfg, tiny_dataset, data)
    assert np.array_equal(again.lists, c.lists)
    one, _ = load_or_build(config(tmp_path, tiny_dataset, bootstrap=1), tiny_dataset, data)
    assert np.array_equal(one.lists[:, 0], c.lists[:, 0])  # round 0 does not depend on B
    pinned, _ = load_or_build(config(tmp_path, tiny_dataset, position="pinned", pinned_position=2), tiny_dataset, data)
    assert (pinned.target_pos == 2).all()
    pop, _ = load_or_build(config(tmp_path, tiny_dataset, negatives="popularity"), tiny_dataset, data)
    assert np.array_equal(pop.targets, c.targets)
    small, _ = load_or_build(config(tmp_path, tiny_dataset, limit=3), tiny_dataset, data)
    assert set(small.users) < set(c.users)  # nested samples: a larger run reuses a smaller one's replies
    row = list(c.users).index(small.users[0])
    assert np.array_equal(small.lists[0, 0], c.lists[row, 0])


def test_candidate_file_made_with_other_settings_is_refused(tmp_path, tiny_dataset):
    from tcf.train.data import SeqData

    data = SeqData(tiny_dataset)
    _, path = load_or_build(config(tmp_path, tiny_dataset), tiny_dataset, data)
    with pytest.raises(ConfigError, match="other settings.*n_candidates"):
        load_or_build(config(tmp_path, tiny_dataset, n_candidates=6, candidates_path=path), tiny_dataset, data)
    bad = json.loads(path.read_text())
    bad["target_positions"] = [[(p[0] + 1) % 5] for p in bad["target_positions"]]
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="damaged"):
        Candidates.load(path)


def test_hard_negatives_come_from_a_trained_run(tmp_path, tiny_dataset):
    from tcf.train.data import SeqData
    from tcf.train.loop import train

    run = tmp_path / "sasrec"
    train(load_config(None, [f"data.dataset={tiny_dataset.path}", "train.epochs=1", "model.dim=8",
                             "eval.bootstrap=0"]), run, progress=False)
    cfg = config(tmp_path, tiny_dataset, negatives="hard", hard_run=run)
    c, _ = load_or_build(cfg, tiny_dataset, SeqData(tiny_dataset))
    assert c.key["hard_run"]["path"] == str(run)
    for row, u in enumerate(c.users):
        assert not (set(c.lists[row, 0].tolist()) - {c.targets[row]}) & set(tiny_dataset.sequence(u).tolist())
    with pytest.raises(ConfigError, match="not a finished `tcf train` run"):
        load_or_build(config(tmp_path, tiny_dataset, negatives="hard", hard_run=tmp_path), tiny_dataset,
                      SeqData(tiny_dataset))


def test_hard_negatives_need_enough_items_outside_each_history(tmp_path, tiny_dataset):
    """A user with fewer allowed items than negatives is refused, as uniform sampling refuses it: the trained
    run's top list would otherwise fill up with masked items (padding, the history, the target itself)."""
    from tcf.train.data import SeqData
    from tcf.train.loop import train

    run = tmp_path / "sasrec"
    train(load_config(None, [f"data.dataset={tiny_dataset.path}", "train.epochs=1", "model.dim=8",
                             "eval.bootstrap=0"]), run, progress=False)
    data = SeqData(tiny_dataset)
    n = data.n_items  # n - 1 negatives: more than any user has outside their sequence (>= 3 items)
    with pytest.raises(ConfigError, match=rf"user \d+: only \d+ items outside the user's history.*n_candidates {n} "):
        load_or_build(config(tmp_path, tiny_dataset, n_candidates=n), tiny_dataset, data)
    with pytest.raises(ConfigError, match=rf"user \d+: only \d+ items outside the user's history.*{n - 1} hard "
                                          rf"negatives.*n_candidates {n} "):
        load_or_build(config(tmp_path, tiny_dataset, n_candidates=n, negatives="hard", hard_run=run), tiny_dataset,
                      data)
    fits = min(n - len(set(data.seqs[u].tolist())) for u in data.users)  # what the longest history leaves
    c, _ = load_or_build(config(tmp_path, tiny_dataset, n_candidates=fits + 1, negatives="hard", hard_run=run,
                                limit=None), tiny_dataset, data)
    for row, u in enumerate(c.users):  # at the limit every list still holds the target and real, unseen items
        items = c.lists[row, 0].tolist()
        assert 0 not in items and len(set(items)) == len(items)
        assert not (set(items) - {c.targets[row]}) & set(data.seqs[u].tolist())


def test_hard_negatives_are_refused_on_the_validation_split():
    """The hard run's checkpoint was early-stopped on the validation targets: lists made hard for it there
    would be fitted to the answers."""
    with pytest.raises(ConfigError, match="negatives: hard.*split: valid.*early-stopped"):
        ZeroShotConfig(negatives="hard", hard_run="runs/sasrec", split="valid")
    assert ZeroShotConfig(negatives="hard", hard_run="runs/sasrec", split="test").split == "test"
    assert ZeroShotConfig(negatives="popularity", split="valid").split == "valid"


def test_every_template_renders_and_ships_with_the_package():
    for name in ("rank", "rank-recency", "rank-icl", "choice", "topk-json"):
        text = PromptTemplate.named(name).render(history=["Fargo", "Heat"], candidates=["Babe", "Seven", "Alien", "Big"],
                                                 k=2, source="ml-100k")
        assert "Babe" in text and "Heat" in text and "{{" not in text
    assert "A. Babe" in PromptTemplate.named("choice").render(history=["x"], candidates=["Babe", "Seven"])
    assert template_path("rank").parent == ROOT / "prompts"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"share/tcf/prompts" = ["prompts/*.jinja"]' in pyproject  # wheels install them as data files


def test_template_errors_name_the_file(tmp_path):
    bad = tmp_path / "mine.jinja"
    bad.write_text("{{ histroy }}")
    with pytest.raises(ConfigError, match="mine.jinja.*histroy.*known variables"):
        PromptTemplate.named(str(bad)).render(history=[], candidates=["a"])
    with pytest.raises(ConfigError, match="no template 'nope'"):
        PromptTemplate.named("nope")


def test_perfect_replies_score_one_and_baselines_use_the_same_candidates(tmp_path, tiny_dataset):
    cfg = config(tmp_path, tiny_dataset, ks="[1,5]")
    r = run_zeroshot(cfg, tmp_path / "out", progress=False, backend=Scripted(target_first(tiny_dataset)))
    m = r["metrics"]["test"]
    assert m["metrics"]["hr@1"]["mean"] == 1.0 and m["metrics"]["ndcg@5"]["mean"] == 1.0
    assert m["baselines"]["random"]["metrics"]["hr@1"]["mean"] == pytest.approx(1 / 5)  # exact expectation
    assert m["baselines"]["random"]["metrics"]["hr@5"]["mean"] == 1.0
    assert m["compliance"]["valid"] == 1.0 and m["n_users"] == 8 and r["task"] == "zeroshot"
    samples = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["ranking"][0] == s["target"] for s in samples)
    assert all(s["candidates"][s["target_position"]] == s["target"] for s in samples)
    assert {"prompt_hash", "prompt", "reply", "parse_status", "metrics"} <= set(samples[0])
    # Pop on the same lists, by hand: the target's rank by training count, ties split exactly
    from tcf.train.data import SeqData

    counts = SeqData(tiny_dataset).train_counts
    hand = []
    for s in samples:
        c = counts[s["candidates"]]
        t = counts[s["target"]]
        hand.append(1.0 / ((c == t).sum()) if (c > t).sum() == 0 else 0.0)
    assert m["baselines"]["pop"]["metrics"]["hr@1"]["mean"] == pytest.approx(np.mean(hand))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["zeroshot"]["protocol"] == "rank" and "git" in saved and "packages" in saved
    table = np.load(tmp_path / "out" / "per_user_test.npy")
    assert table.shape == (len(saved["per_user_columns"]), 8)


def test_failed_and_partial_replies_are_counted_and_unranked_go_last(tmp_path, tiny_dataset):
    replies = iter(["", "2", "5, 4, 3, 2, 1", "no idea", "1", "1, 2", "2, 1", "3"])
    cfg = config(tmp_path, tiny_dataset)
    r = run_zeroshot(cfg, tmp_path / "o", progress=False, backend=Scripted(lambda c, p: next(replies)))
    c = r["metrics"]["test"]["compliance"]
    assert c["counts"] == {"failed": 2, "partial": 5, "valid": 1} and c["failed"] == 0.25
    samples = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    first = samples[0]  # empty reply: every candidate tied, the random baseline wherever the target was presented
    assert first["metrics"]["hr@1"] == pytest.approx(1 / 5) and first["parse_status"] == "failed"


def test_bootstrap_rounds_are_aggregated(tmp_path, tiny_dataset):
    cfg = config(tmp_path, tiny_dataset, bootstrap=3)
    backend = Scripted(target_first(tiny_dataset))
    r = run_zeroshot(cfg, tmp_path / "b", progress=False, backend=backend)
    assert backend.calls == 24 and r["metrics"]["test"]["metrics"]["hr@1"]["mean"] == 1.0
    positions = {json.loads(x)["target_position"] for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()}
    assert len(positions) > 1  # reshuffled


def test_warm_rerun_makes_no_backend_call(tmp_path, tiny_dataset):
    with FakeServer(chat=lambda msgs: "2, 1, 3") as srv:
        cfg = config(tmp_path, tiny_dataset, api_base=srv.url)
        cold = run_zeroshot(cfg, tmp_path / "cold", progress=False)
        n = len(srv.requests)
    assert n == 8 and cold["backend"]["calls"] == 8
    # the server is gone: any call would fail; a warm rerun must not need one
    warm = run_zeroshot(cfg, tmp_path / "warm", progress=False)
    assert warm["backend"]["calls"] == 0 and warm["backend"]["cache_hits"] == 8
    assert warm["metrics"] == cold["metrics"]
    counting = Scripted(lambda c, p: "1")
    counting.identity = warm["backend"]["identity"]  # the same model: its replies are the cached ones
    run_zeroshot(cfg, tmp_path / "warm2", progress=False, backend=counting)
    assert counting.calls == 0


def test_cache_key_and_what_is_cacheable():
    msgs = [{"role": "user", "content": "x"}]
    base = cache_key("hf", "m@1", msgs, {"temperature": 0.0})
    assert base != cache_key("hf", "m@2", msgs, {"temperature": 0.0})
    assert base != cache_key("hf", "m@1", [{"role": "user", "content": "x "}], {"temperature": 0.0})
    assert base != cache_key("hf", "m@1", msgs, {"temperature": 0.0, "max_new_tokens": 3})
    assert cacheable({"temperature": 0.0}) and not cacheable({"temperature": 0.7, "seed": None})
    assert cacheable({"temperature": 0.7, "seed": 3})


def test_sampled_replies_without_seed_are_not_cached(tmp_path, tiny_dataset):
    cfg = config(tmp_path, tiny_dataset, temperature=0.8)
    b = Scripted(lambda c, p: "1")
    run_zeroshot(cfg, tmp_path / "s1", progress=False, backend=b)
    run_zeroshot(cfg, tmp_path / "s2", progress=False, backend=b)
    assert b.calls == 16
    seeded = config(tmp_path, tiny_dataset, temperature=0.8, gen_seed=1)
    run_zeroshot(seeded, tmp_path / "s3", progress=False, backend=b)
    run_zeroshot(seeded, tmp_path / "s4", progress=False, backend=b)
    assert b.calls == 24


def test_server_faults_do_not_stop_the_run_and_failures_are_retried_next_time(tmp_path, tiny_dataset):
    script = ["ok", 500, "malformed", 429, "ok", "ok", "ok", "ok", "ok", "ok"]
    with FakeServer(script=script, chat=lambda m: "1, 2") as srv:
        # 3 of 8 prompts fail: allowed here (the default share fails the run: test_zeroshot_dead_backend.py)
        cfg = config(tmp_path, tiny_dataset, api_base=srv.url, concurrency=1, max_backend_error_rate=0.5)
        r = run_zeroshot(cfg, tmp_path / "f", progress=False)
        c = r["metrics"]["test"]["compliance"]
        assert c["backend_errors"] == 3 and c["counts"]["failed"] == 3
        again = run_zeroshot(cfg, tmp_path / "f2", progress=False)
    assert again["backend"]["calls"] == 3 and again["backend"]["cache_hits"] == 5  # only the failed ones
    assert again["metrics"]["test"]["compliance"]["backend_errors"] == 0


@pytest.mark.slow  # a subprocess that imports torch: seconds on a loaded machine
def test_killed_run_resumes_from_the_cache(tmp_path, tiny_dataset):
    """kill -9 in the middle of a run: the replies already received are kept, the rerun asks only for the rest."""
    with FakeServer(script=[("sleep", 0.3)] * 100, chat=lambda m: "3, 1") as srv:
        cfg_file = tmp_path / "zs.yaml"
        cfg_file.write_text(json.dumps({"task": "zeroshot", "cache_root": str(tmp_path / "cache"),
                                        "data": {"dataset": str(tiny_dataset.path)},
                                        "zeroshot": {"n_candidates": 5, "history_len": 3, "limit": 20,
                                                     "backend": "openai", "api_base": srv.url, "model": "fake",
                                                     "concurrency": 1}}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "tcf.cli", "zeroshot", "--config", str(cfg_file), "--out",
                                 str(tmp_path / "k"), "--quiet"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        db = tmp_path / "cache" / "zeroshot" / "responses.sqlite"
        deadline = time.time() + 60
        done = 0
        while time.time() < deadline and done < 4:
            time.sleep(0.2)
            if db.exists():
                try:
                    done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM replies").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = sqlite3.connect(db).execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        assert 4 <= kept < 20 and not (tmp_path / "k" / "results.json").exists()
        before = len(srv.requests)
        r = run_zeroshot(load_config(cfg_file), tmp_path / "k", progress=False)
    assert len(srv.requests) - before == 20 - kept == r["backend"]["calls"]
    assert r["backend"]["cache_hits"] == kept and r["metrics"]["test"]["compliance"]["backend_errors"] == 0


def test_cli_writes_results_and_prints_baselines(tmp_path, tiny_dataset, capsys):
    from tcf.cli import main

    with FakeServer(chat=lambda m: "2, 1") as srv:
        cfg_file = tmp_path / "zs.yaml"
        cfg_file.write_text(f"task: zeroshot\ncache_root: {tmp_path / 'cache'}\ndata:\n  dataset: {tiny_dataset.path}\n"
                            f"zeroshot:\n  protocol: choice\n  backend: openai\n  api_base: {srv.url}\n  model: fake\n")
        assert main(["zeroshot", "--config", str(cfg_file), "--limit", "5", "--out", str(tmp_path / "c"), "--quiet",
                     "--set", "zeroshot.history_len=2"]) == 0
    out = capsys.readouterr().out
    assert "pop" in out and "random" in out and "compliance:" in out and "5 users, 4 candidates" in out
    saved = json.loads((tmp_path / "c" / "results.json").read_text())
    assert saved["config"]["zeroshot"]["limit"] == 5 and saved["config"]["zeroshot"]["history_len"] == 2
    assert main(["zeroshot", "--config", str(cfg_file), "--set", "zeroshot.protocol=ranking"]) == 2
    assert "zeroshot.protocol must be one of" in capsys.readouterr().err


def test_config_validation_and_defaults():
    assert ZeroShotConfig(protocol="choice").candidates() == 4
    assert ZeroShotConfig(protocol="topk-json").candidates() == 100 and ZeroShotConfig().candidates() == 20
    assert ZeroShotConfig().new_tokens() == 96 and ZeroShotConfig(protocol="choice").new_tokens() == 8
    assert RunConfig().task == "train"
    with pytest.raises(ConfigError, match="task must be one of"):
        load_config(None, ["task=predict"])
    with pytest.raises(ConfigError, match="hard_run"):
        ZeroShotConfig(negatives="hard")
    with pytest.raises(ConfigError, match="pinned_position"):
        ZeroShotConfig(position="pinned", pinned_position=20)
    with pytest.raises(ConfigError, match="unknown setting 'zeroshot.temprature'"):
        load_config(None, ["zeroshot.temprature=1"])
    assert load_config(ROOT / "experiments" / "zeroshot-ml100k.yaml").zeroshot.model == "smollm2-135m"
