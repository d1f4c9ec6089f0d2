"""The report's "against the papers" section: each verdict follows from the test's sign and significance."""

from __future__ import annotations

import pytest

from tcf.experiments.answers import ReportSettings
from tcf.experiments.papers import CLAIMS, Measured, against_papers, verdict


@pytest.mark.parametrize("expect, diff, significant, want", [
    (">", +0.01, True, "**same direction**"),
    (">", -0.01, True, "**opposite**"),
    (">", +0.01, False, "not shown here (same sign)"),
    (">", -0.01, False, "not shown here (opposite sign)"),
    ("<", -0.01, True, "**same direction**"),
    ("<", +0.01, True, "**opposite**"),
    ("<", -0.01, False, "not shown here (same sign)"),
    (">=", -0.01, False, "not contradicted (see the CI)"),  # no evidence of equivalence: the row shows the CI
    (">=", +0.01, True, "**same direction**"),
    (">=", -0.01, True, "**opposite**"),
    ("<=", +0.01, False, "not contradicted (see the CI)"),
    ("<=", +0.01, True, "**opposite**"),
    ("<=", -0.01, True, "**same direction**"),
])
def test_verdict(expect, diff, significant, want):
    assert verdict(expect, Measured("x", diff, significant, "t")) == want


def test_a_difference_significant_only_before_correction_says_so():
    # Holm leaves it not significant; its unadjusted CI excludes 0: the row says both, and blames no "scale"
    m = Measured("x", -0.0135, False, "t", ci=[-0.0244, -0.0027])
    assert verdict(">", m) == "not shown here (opposite sign; its unadjusted 95% CI excludes 0)"
    assert verdict(">", Measured("x", 0.01, False, "t", ci=[-0.001, 0.02])) == "not shown here (same sign)"


def _zs_test(baseline, label, diff, p_holm, significant):
    return {"baseline": baseline, "label": label, "diff": diff, "test": "paired permutation test over users",
            "p_value": p_holm / 2, "p_holm": p_holm, "family": 3, "significant": significant}


def test_zero_shot_claims_read_the_zero_shot_tests_and_unmeasured_claims_say_so():
    zs = [{"model": "smollm2-135m", "protocol": "rank", "tests": [
        _zs_test("random", "random", 0.01, 0.5, False),
        _zs_test("pop", "popularity", -0.05, 0.001, True),
        _zs_test("trained SASRec (ID)", "the trained SASRec (ID)", -0.2, 0.0001, True)]}]
    md = "\n".join(against_papers([], zs, ReportSettings()))
    rows = [line for line in md.splitlines() if line.startswith("| ") and "paper |" not in line]
    assert len(rows) == len(CLAIMS)
    trained = [r for r in rows if "vs the trained SASRec (ID)" in r]
    assert len(trained) == 1 and trained[0].endswith("| **same direction** |")
    pop = [r for r in rows if "vs popularity" in r]
    assert len(pop) == 1 and pop[0].endswith("| **same direction** |") and "-0.0500" in pop[0]
    assert not any("vs random" in r for r in rows)  # no paper claim is about random
    unmeasured = [r for r in rows if "not measured here" in r]
    assert len(unmeasured) == len(CLAIMS) - 2


def test_the_fine_tuned_claim_compares_fine_tuned_text_not_the_best_text_tower(tmp_path):
    """The report's text-vs-ID answer picks the best text tower on validation (here frozen); the TCF claim is
    about fine-tuned encoders, so its row compares the fine-tuned tower with ID."""
    import json

    import numpy as np

    from tcf.experiments.report import write_report

    for name, tower, ndcg in (("id", "id", 0.10), ("frozen", "frozen", 0.12), ("tuned", "finetune", 0.06)):
        folder = tmp_path / name
        folder.mkdir()
        per_user = np.full(40, ndcg) + np.linspace(-0.01, 0.01, 40)
        np.save(folder / "per_user_test.npy", np.stack([np.arange(1, 41), per_user]))
        np.save(folder / "per_user_valid.npy", np.stack([np.arange(1, 41), per_user]))
        metrics = {"ndcg@10": {"mean": ndcg, "ci95": [ndcg - 0.01, ndcg + 0.01]}}
        (folder / "results.json").write_text(json.dumps({
            "config": {"name": name, "seed": 0, "model": {"head": "sasrec", "tower": tower},
                       "encoder": {"model": "minilm-l6"}},
            "metrics": {sp: {"metrics": metrics} for sp in ("valid", "test")},
            "per_user_columns": ["user_id", "ndcg@10"]}))
    md = write_report(tmp_path, settings={"papers": True}).read_text()
    row = next(line for line in md.splitlines() if "fine-tuned text comparable to or better than ID" in line)
    assert "SASRec: fine-tuned text (minilm-l6) vs ID" in row and row.endswith("| **opposite** |")
    assert "-0.0400 [" in row


def test_the_dssm_text_below_id_claim_never_reads_an_id_plus_text_tower(tmp_path):
    """ID + text keeps the ID embeddings: best on validation here, it must not answer whether text replaces ID."""
    import json

    import numpy as np

    from tcf.experiments.report import write_report

    for name, tower, ndcg in (("id", "id", 0.10), ("frozen", "frozen", 0.06), ("both", "id+text", 0.15)):
        folder = tmp_path / name
        folder.mkdir()
        per_user = np.full(40, ndcg) + np.linspace(-0.01, 0.01, 40)
        for split in ("test", "valid"):
            np.save(folder / f"per_user_{split}.npy", np.stack([np.arange(1, 41), per_user]))
        metrics = {"ndcg@10": {"mean": ndcg, "ci95": [ndcg - 0.01, ndcg + 0.01]}}
        (folder / "results.json").write_text(json.dumps({
            "config": {"name": name, "seed": 0, "model": {"head": "dssm", "tower": tower},
                       "encoder": {"model": "minilm-l6"}},
            "metrics": {sp: {"metrics": metrics} for sp in ("valid", "test")},
            "per_user_columns": ["user_id", "ndcg@10"]}))
    md = write_report(tmp_path, settings={"papers": True}).read_text()
    row = next(line for line in md.splitlines() if "text below ID with DSSM" in line)
    assert "DSSM: frozen text (minilm-l6) vs ID" in row and "ID + text" not in row
    assert row.endswith("| **same direction** |") and "-0.0400 [" in row


@pytest.mark.parametrize("small, large, want", [
    ("opt-125m", "opt-350m", "not shown here"),  # one family: the claim is tested
    ("minilm-l6", "embeddinggemma-300m", "not tested here: different model families (embeddinggemma, minilm)"),
])
def test_the_size_claim_is_tested_only_within_one_model_family(tmp_path, small, large, want):
    """TCF's size trend is OPT 125M -> 175B; a larger encoder of another family does not test it."""
    import json

    import numpy as np

    from tcf.experiments.report import write_report

    rng = np.random.default_rng(0)
    for name, enc, params in (("small", small, 125_000_000), ("large", large, 350_000_000)):
        folder = tmp_path / name
        folder.mkdir()
        per_user = 0.1 + rng.normal(0, 0.05, 40)
        for split in ("test", "valid"):
            np.save(folder / f"per_user_{split}.npy", np.stack([np.arange(1, 41), per_user]))
        m = float(per_user.mean())
        metrics = {"ndcg@10": {"mean": m, "ci95": [m - 0.01, m + 0.01]}}
        (folder / "results.json").write_text(json.dumps({
            "config": {"name": name, "seed": 0, "model": {"head": "sasrec", "tower": "frozen"},
                       "encoder": {"model": enc}},
            "parameters": {"encoder": params},
            "metrics": {sp: {"metrics": metrics} for sp in ("valid", "test")},
            "per_user_columns": ["user_id", "ndcg@10"]}))
    md = write_report(tmp_path, settings={"papers": True}).read_text()
    row = next(line for line in md.splitlines() if "a bigger item encoder helps" in line)
    assert row.rstrip(" |").split("| ")[-1].startswith(want), row


def test_a_verdict_on_one_trained_checkpoint_says_so():
    """Zero-shot against a trained model scored on one seed's checkpoint: the direction is that checkpoint's."""
    from tcf.experiments.papers import Measured, verdict

    one = Measured("zs vs trained", -0.2, True, "paired permutation test over users", [-0.25, -0.15],
                   one_checkpoint=True)
    assert verdict("<", one) == "**same direction** (one checkpoint)"
    assert verdict(">", one) == "**opposite** (one checkpoint)"
    assert verdict("<", Measured("x", -0.2, False, "", None, one_checkpoint=True)).startswith("not shown")
    assert verdict("<", Measured("x", -0.2, True, "", None)) == "**same direction**"
