"""The report selects towers and baselines on validation, never on the split it tests on, and
corrects each answer's family of tests with Holm–Bonferroni (adjusted p-values checked by hand)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tcf.eval.metrics import holm, paired_test, t_pvalue
from tcf.experiments.report import write_report
from tcf.experiments.results import T975


def put(root: Path, name: str, *, head="sasrec", tower="id", encoder="minilm-l6", lr=0.001, seed=0,
        valid=0.05, test=0.05, half=0.005, per_user=None) -> None:
    """A results.json with chosen valid and test NDCG@10 (and per-user test values when given)."""
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {split: {"metrics": {"ndcg@10": {"mean": v, "ci95": [v - half, v + half]}}}
               for split, v in (("valid", valid), ("test", test))}
    res = {"config": {"name": name, "seed": seed, "model": {"head": head, "tower": tower},
                      "encoder": {"model": encoder}, "train": {"lr": lr}},
           "metrics": metrics, "parameters": {"trainable": 10}}
    if per_user is not None:
        res["per_user_columns"] = ["user_id", "ndcg@10"]
        np.save(folder / "per_user_test.npy", np.stack([np.arange(1, len(per_user) + 1), per_user]))
    (folder / "results.json").write_text(json.dumps(res))


def comparisons(root: Path, question: str) -> list[dict]:
    summary = json.loads((root / "report" / "report.json").read_text())
    return [c for c in summary["comparisons"] if c["question"] == question]


def z_p(a: float, b: float, half_a: float, half_b: float) -> float:
    """Two-sided normal p-value of a difference, each standard error read off a 95% CI."""
    z = (a - b) / math.hypot(half_a / 1.96, half_b / 1.96)
    return math.erfc(abs(z) / math.sqrt(2))


def test_the_validation_best_tower_and_baseline_are_compared(tmp_path):
    put(tmp_path, "id-a", lr=0.001, valid=0.030, test=0.020)
    put(tmp_path, "id-b", lr=0.01, valid=0.020, test=0.035)  # best ID on test, not on validation
    put(tmp_path, "mini", tower="frozen", valid=0.050, test=0.040)  # best text tower on validation
    put(tmp_path, "gem", tower="frozen", encoder="gemma3-270m", valid=0.045, test=0.060)  # best on test
    put(tmp_path, "did", head="dssm", valid=0.03, test=0.030, half=0.004)
    put(tmp_path, "dmini", head="dssm", tower="frozen", valid=0.04, test=0.036, half=0.004)
    md = write_report(tmp_path).read_text()
    answer = md.split("**Does text beat ID?**")[1].split("**")[0]
    line = next(x for x in md.splitlines() if x.startswith("- SASRec:"))
    assert "frozen text (minilm-l6)" in line and "gemma3-270m" not in line
    assert "ndcg@10 0.0400 vs 0.0200" in line  # the ID setting best on validation (lr=0.001)
    assert "selected on valid" in md and "Holm" in md
    got = {c["head"]: c for c in comparisons(tmp_path, "text vs ID")}
    assert {c["selected_on"] for c in got.values()} == {"valid"} and {c["family"] for c in got.values()} == {2}
    raw = {"sasrec": z_p(0.040, 0.020, 0.005, 0.005), "dssm": z_p(0.036, 0.030, 0.004, 0.004)}
    lo, hi = sorted(raw, key=raw.get)
    by_hand = {lo: min(1, 2 * raw[lo])}
    by_hand[hi] = min(1, max(by_hand[lo], raw[hi]))
    for head in raw:
        assert got[head]["p_value"] == pytest.approx(raw[head], rel=1e-6)
        assert got[head]["p_holm"] == pytest.approx(by_hand[head], rel=1e-6)
    assert f"{by_hand['dssm']:.3g}" in answer


def test_fine_tuning_family_is_holm_corrected(tmp_path):
    rng = np.random.default_rng(0)
    raw = {}
    for i, (enc, gain) in enumerate((("e1", 0.004), ("e2", 0.002), ("e3", 0.0))):
        base = rng.random(300) * 0.1
        tuned = base + gain + rng.normal(0, 0.02, 300)
        put(tmp_path, f"fr{i}", tower="frozen", encoder=enc, test=float(base.mean()), half=0.02, per_user=base)
        put(tmp_path, f"ft{i}", tower="finetune", encoder=enc, test=float(tuned.mean()), half=0.02, per_user=tuned)
        raw[enc] = paired_test(tuned, base, n=2000)["p_value"]
    order = sorted(raw, key=raw.get)
    by_hand, running = {}, 0.0
    for j, enc in enumerate(order):
        running = max(running, min(1.0, (len(order) - j) * raw[enc]))
        by_hand[enc] = running
    write_report(tmp_path)
    got = {c["a"].split("(")[1].rstrip(")"): c for c in comparisons(tmp_path, "fine-tuned vs frozen")}
    assert set(got) == set(raw)
    for enc in raw:
        assert got[enc]["p_value"] == pytest.approx(raw[enc]) and got[enc]["p_holm"] == pytest.approx(by_hand[enc])
        assert got[enc]["family"] == 3 and got[enc]["test"].startswith("paired permutation test over users (checkpoints treated as fixed")


def test_holm_and_t_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])  # 2 x 0.2, then max(0.4, 0.3): monotone
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    for df in (1, 2, 4, 10, 30):
        assert t_pvalue(T975[df - 1], df) == pytest.approx(0.05, abs=2e-4)
    assert t_pvalue(0.0, 3) == pytest.approx(1.0)


def test_selection_scores_candidates_on_the_seeds_they_all_have(tmp_path):
    """A lucky single seed must not win against a group whose mean over three seeds is lower but whose run on
    that same seed is better: both are scored on the shared seed."""
    from tcf.experiments.answers import select
    from tcf.experiments.results import group_runs, load_runs

    root = tmp_path
    put(root, "lucky", tower="frozen", encoder="a", seed=0, valid=0.20)
    for seed, v in ((0, 0.22), (1, 0.16), (2, 0.16)):  # mean 0.18 < 0.20, but 0.22 > 0.20 on seed 0
        put(root, f"steady{seed}", tower="frozen", encoder="b", seed=seed, valid=v)
    groups = group_runs(load_runs(root)[0])
    assert select(groups, "ndcg@10").first.encoder == "b"
    put(root, "other-seed", tower="frozen", encoder="c", seed=9, valid=0.19)  # shares no seed: own means
    groups = group_runs(load_runs(root)[0])
    assert select(groups, "ndcg@10").first.encoder == "a"


def test_selection_counts_only_seeds_with_a_validation_value_and_labels_drop_settings_a_tower_ignores(tmp_path):
    import json as _json

    from tcf.experiments.answers import extra_settings, select
    from tcf.experiments.results import group_runs, load_runs

    put(tmp_path, "a0", tower="frozen", encoder="a", seed=0, valid=0.10)
    put(tmp_path, "a1", tower="frozen", encoder="a", seed=1, valid=0.30)
    res = _json.loads((tmp_path / "a0" / "results.json").read_text())
    del res["metrics"]["valid"]  # seed 0 of a has no validation number
    (tmp_path / "a0" / "results.json").write_text(_json.dumps(res))
    for seed, v in ((0, 0.20), (1, 0.35)):  # mean 0.275 < a's 0.30, but better on seed 1
        put(tmp_path, f"b{seed}", tower="frozen", encoder="b", seed=seed, valid=v)
    groups = group_runs(load_runs(tmp_path)[0])
    assert select(groups, "ndcg@10").first.encoder == "b"  # both scored on seed 1, the seed both have a value for
    fake = type("G", (), {})()
    fake.first = type("R", (), {"tower": "id"})()
    fake.settings = {"model.finetune_layers": 2, "train.lr": 0.01}
    assert extra_settings(fake) == "train.lr=0.01"
    fake.first.tower = "finetune"
    assert extra_settings(fake) == "model.finetune_layers=2, train.lr=0.01"
