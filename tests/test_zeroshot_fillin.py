"""Candidates a reply leaves unranked: by default a tie below every ranked one, so their metrics are the exact
expectation under a random order of them, and a failed reply scores the random baseline wherever the prompt
put the target (shuffled, pinned first, pinned last), for one round or a Borda sum over bootstrap rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripted import target_in_prompt
from tcf.experiments.config import ZeroShotConfig
from tcf.zeroshot.parsing import parse
from tcf.zeroshot.runner import order_scores
from test_zeroshot_run import Scripted, config

CANDS = ["Toy Story", "GoldenEye", "Usual Suspects, The", "Star Wars", "Babe"]
N = 5


def ndcg_uniform(first: int, last: int, k: int) -> float:
    """E[NDCG@k] of a target whose rank is uniform on first..last (1-based)."""
    return float(np.mean([1 / np.log2(r + 1) if r <= k else 0.0 for r in range(first, last + 1)]))


def samples(folder) -> list[dict]:
    return [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]


def naming_a_negative(ds):
    """Replies that rank one candidate that is not the user's target (found from the history shown), nothing else."""
    def reply(cands, prompt):
        target = target_in_prompt(ds, cands, prompt)
        if target is None:
            raise AssertionError("no user found for the prompt")
        return str(min(i for i, c in enumerate(cands, start=1) if c != target))
    return reply


def test_default_is_a_tie_and_the_presented_order_is_opt_in_only():
    assert ZeroShotConfig().unranked == "tie"
    for mode in ("tie", "shuffle", "order"):
        assert ZeroShotConfig(unranked=mode).unranked == mode


def test_partial_reply_leaves_its_tail_tied_below_every_ranked_candidate():
    p = parse("4, 2", CANDS, "rank")
    s = order_scores(p, N, "tie")
    assert s[3] > s[1] > max(s[[0, 2, 4]]) and s[0] == s[2] == s[4]
    assert s[0] == np.mean([1, 2, 3])  # the Borda points left (3, 2, 1), shared: sums over rounds stay expectations
    assert np.all(order_scores(parse("", CANDS, "rank"), N, "tie") == (N + 1) / 2)
    assert list(np.argsort(-order_scores(p, N, "order"), kind="stable")) == [3, 1, 0, 2, 4]
    shuffled = order_scores(p, N, "shuffle", np.random.default_rng(0))
    assert sorted(shuffled) == [1, 2, 3, 4, 5] and (shuffled[3], shuffled[1]) == (5, 4)


@pytest.mark.parametrize("position,bootstrap", [("shuffle", 1), ("pinned:0", 1), ("pinned:4", 1), ("shuffle", 3),
                                                ("pinned:0", 3), ("pinned:4", 2)])
def test_failed_replies_score_exactly_the_random_baseline_wherever_the_target_is(tmp_path, tiny_dataset, position,
                                                                                   bootstrap):
    where = {"position": "pinned", "pinned_position": position.split(":")[1]} if ":" in position else {}
    cfg = config(tmp_path, tiny_dataset, ks="[1,2,5]", bootstrap=bootstrap, **where)
    r = run_zeroshot_quiet(cfg, tmp_path / "o", "")
    m = r["metrics"]["test"]
    assert m["compliance"]["failed"] == 1.0
    for k in (1, 2, 5):  # HR@k = k / n, exactly, for every user
        assert m["metrics"][f"hr@{k}"]["mean"] == pytest.approx(k / N, abs=1e-12)
    assert m["metrics"]["ndcg@5"]["mean"] == pytest.approx(ndcg_uniform(1, N, 5), abs=1e-12)
    assert {k: v["mean"] for k, v in m["metrics"].items()} == pytest.approx(
        {k: v["mean"] for k, v in m["baselines"]["random"]["metrics"].items()}, abs=1e-12)
    assert all(s["metrics"]["hr@1"] == pytest.approx(1 / N) for s in samples(tmp_path / "o"))


@pytest.mark.parametrize("position,bootstrap", [("pinned:0", 1), ("pinned:4", 1), ("shuffle", 3)])
def test_a_partial_replys_unranked_target_is_tied_with_the_other_unranked(tmp_path, tiny_dataset, position,
                                                                          bootstrap):
    """One negative ranked, the target left out (in every round): its rank is uniform on 2..5 wherever it sat."""
    where = {"position": "pinned", "pinned_position": position.split(":")[1]} if ":" in position else {}
    cfg = config(tmp_path, tiny_dataset, ks="[1,2,5]", bootstrap=bootstrap, **where)
    r = run_zeroshot_quiet(cfg, tmp_path / "p", naming_a_negative(tiny_dataset))
    m = r["metrics"]["test"]["metrics"]
    assert m["hr@1"]["mean"] == 0.0 and m["hr@5"]["mean"] == 1.0
    named: dict[int, set] = {}  # rounds may name different negatives: all of them rank above the target
    for s in samples(tmp_path / "p"):
        named.setdefault(s["user"], set()).update(s["ranking"])
    for s in samples(tmp_path / "p"):  # the target ties with every candidate no round named
        above = len(named[s["user"]])
        assert s["metrics"]["hr@2"] == pytest.approx(max(0, 2 - above) / (N - above), abs=1e-12)
        assert s["metrics"]["ndcg@5"] == pytest.approx(ndcg_uniform(above + 1, N, 5), abs=1e-12)
    if bootstrap == 1:
        assert m["hr@2"]["mean"] == pytest.approx(1 / 4, abs=1e-12)
        assert m["ndcg@5"]["mean"] == pytest.approx(ndcg_uniform(2, N, 5), abs=1e-12)


def test_shuffle_is_seeded(tmp_path, tiny_dataset):
    cfg = config(tmp_path, tiny_dataset, unranked="shuffle", position="pinned", pinned_position=0)
    a = run_zeroshot_quiet(cfg, tmp_path / "a", "")["metrics"]["test"]["metrics"]
    b = run_zeroshot_quiet(cfg, tmp_path / "b", "")["metrics"]["test"]["metrics"]
    assert a == b
    assert {s["metrics"]["hr@1"] for s in samples(tmp_path / "a")} <= {0.0, 1.0}
    assert a["hr@1"]["mean"] < 1.0  # not the pinned slot


def test_presented_order_opt_in_still_scores_the_pinned_slot(tmp_path, tiny_dataset):
    """What the old default did, kept for reproducing papers that did it: a failed reply gets HR@1 = 1 at slot 0."""
    cfg = config(tmp_path, tiny_dataset, unranked="order", position="pinned", pinned_position=0)
    assert run_zeroshot_quiet(cfg, tmp_path / "o", "")["metrics"]["test"]["metrics"]["hr@1"]["mean"] == 1.0


def run_zeroshot_quiet(cfg, out, reply):
    from tcf.zeroshot import run_zeroshot

    return run_zeroshot(cfg, out, progress=False, backend=Scripted(reply if callable(reply) else lambda c, p: reply))
