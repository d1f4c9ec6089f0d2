"""The report's "against the papers" section: each verdict follows from the test's sign and significance."""

from __future__ import annotations

import pytest

from tcf.experiments.answers import ReportSettings
from tcf.experiments.papers import CLAIMS, Measured, against_papers, verdict


@pytest.mark.parametrize("expect, diff, significant, want", [
    (">", +0.01, True, "**same direction**"),
    (">", -0.01, True, "**opposite**"),
    (">", +0.01, False, "not shown at this scale (same sign)"),
    (">", -0.01, False, "not shown at this scale (opposite sign)"),
    ("<", -0.01, True, "**same direction**"),
    ("<", +0.01, True, "**opposite**"),
    ("<", -0.01, False, "not shown at this scale (same sign)"),
    (">=", -0.01, False, "consistent"),  # comparable: only a significant shortfall contradicts it
    (">=", +0.01, True, "consistent"),
    (">=", -0.01, True, "**opposite**"),
    ("<=", +0.01, False, "consistent"),
    ("<=", +0.01, True, "**opposite**"),
    ("<=", -0.01, True, "consistent"),
])
def test_verdict(expect, diff, significant, want):
    assert verdict(expect, Measured("x", diff, significant, "t")) == want


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
    assert len(trained) == 2 and all(r.endswith("| **same direction** |") for r in trained)
    pop = [r for r in rows if "vs popularity" in r]
    assert len(pop) == 1 and pop[0].endswith("| consistent |") and "-0.0500" in pop[0]
    assert not any("vs random" in r for r in rows)  # no paper claim is about random
    unmeasured = [r for r in rows if "not measured here" in r]
    assert len(unmeasured) == len(CLAIMS) - 3
