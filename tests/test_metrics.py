"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tcf.eval.metrics import bootstrap_ci, metrics_from_ranks, metrics_from_scores, paired_test


def test_single_rank_by_hand():
    # target ranked 3rd: 2 items above, no ties
    m = metrics_from_ranks([2], [0], ks=(1, 2, 3, 5))
    assert m["hr@2"][0] == 0 and m["hr@3"][0] == 1 and m["hr@5"][0] == 1
    assert m["ndcg@3"][0] == pytest.approx(1 / math.log2(4))
    assert m["mrr@5"][0] == pytest.approx(1 / 3)
    assert m["ndcg@2"][0] == 0 and m["mrr@2"][0] == 0


def test_ties_take_the_expectation():
    # scores: target 0.5 ties with two others, one item above: rank uniform on {2, 3, 4}
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]])
    m = metrics_from_scores(scores, [2], ks=(1, 2, 3, 10))
    assert m["hr@1"][0] == 0
    assert m["hr@2"][0] == pytest.approx(1 / 3)
    assert m["hr@3"][0] == pytest.approx(2 / 3)
    assert m["ndcg@10"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 3)
    assert m["mrr@3"][0] == pytest.approx((1 / 2 + 1 / 3) / 3)


def test_constant_scores_are_chance_not_perfect():
    n = 100
    m = metrics_from_scores(np.zeros((1, n)), [7], ks=(10,))
    assert m["hr@10"][0] == pytest.approx(10 / n)


def test_k_larger_than_catalogue():
    m = metrics_from_scores(np.array([[0.1, 0.2, 0.3]]), [0], ks=(5, 20))
    assert m["hr@5"][0] == 1 and m["hr@20"][0] == 1
    assert m["ndcg@20"][0] == pytest.approx(1 / math.log2(4))


def test_masked_history_cannot_outrank():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0]])
    scores[0, 1] = -torch.inf  # item 1 is in the user's history
    m = metrics_from_scores(scores, torch.tensor([2]), ks=(1,))
    assert m["hr@1"][0] == 1


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 30)).round(1)  # rounding makes ties
    t = rng.integers(0, 30, 50)
    a = metrics_from_scores(s, t)
    b = metrics_from_scores(torch.tensor(s), torch.tensor(t))
    for k in a:
        np.testing.assert_allclose(a[k], b[k])


def test_bootstrap_and_paired_test():
    rng = np.random.default_rng(1)
    x = rng.random(500)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.1
    better = paired_test(x + 0.05, x)
    assert better["mean_diff"] == pytest.approx(0.05) and better["p_value"] < 0.01
    same = paired_test(x, x[rng.permutation(500)])
    assert same["p_value"] > 0.01
    with pytest.raises(ValueError):
        paired_test(x, x[:10])
