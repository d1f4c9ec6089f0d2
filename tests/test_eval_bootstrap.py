"""``eval.bootstrap`` is the number of resamples drawn, and resampling memory is bounded by a chunk
size, not users x resamples; for a seed the intervals and p-values are those of the unchunked draw."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tcf.eval.metrics import bootstrap_ci, paired_test, summarize
from tcf.eval.ranking import EvalResult, report


def reference_ci(values, n, seed, level=0.95):
    """The interval as first written: every resample drawn at once ([n, users] indices)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2))


def reference_p(d, n, seed):
    rng = np.random.default_rng(seed)
    null = np.abs((rng.choice([-1.0, 1.0], size=(n, len(d))) * d).mean(1))
    return (1 + np.sum(null >= abs(d.mean()) - 1e-12)) / (n + 1)


def test_chunked_draws_equal_the_unchunked_ones():
    rng = np.random.default_rng(0)
    x = rng.random(301)
    for n, chunk in ((1000, 1), (1000, 301 * 7 + 5), (37, 10**9)):
        assert bootstrap_ci(x, n=n, seed=4, chunk=chunk) == reference_ci(x, n, 4)
    d = rng.normal(0.01, 0.1, 301)
    for chunk in (1, 1000, 10**9):
        assert paired_test(d, np.zeros_like(d), n=999, seed=2, chunk=chunk)["p_value"] == reference_p(d, 999, 2)


def test_the_count_is_honoured():
    x = np.random.default_rng(1).random(200)
    got = summarize({"a": x, "b": x ** 2}, n=50, seed=3)
    assert got["a"]["ci95"] == list(reference_ci(x, 50, 3)) and got["b"]["ci95"] == list(reference_ci(x ** 2, 50, 3))
    assert got["a"]["ci95"] != list(reference_ci(x, 1000, 3))
    assert "ci95" not in summarize({"a": x}, ci=False)["a"]


def test_report_draws_eval_bootstrap_resamples():
    class Data:
        train_counts = np.ones(5, dtype=np.int64)
        seqs = [np.zeros(0, np.int64)] + [np.array([1, 2, 3, 4])] * 40

        def history_lengths(self, split):
            return np.full(40, 3)

    x = np.random.default_rng(2).random(40)
    result = EvalResult("test", np.arange(1, 41), np.full(40, 4), {"ndcg@10": x})
    out = report(result, Data(), bootstrap=50, cold_max_count=0, history_buckets=[], seed=7)
    assert out["metrics"]["ndcg@10"]["ci95"] == list(reference_ci(x, 50, 7)) and out["bootstrap"] == 50
    assert "ci95" not in report(result, Data(), bootstrap=0, cold_max_count=0, history_buckets=[])["metrics"]["ndcg@10"]


@pytest.mark.parametrize("fn", ["bootstrap", "paired"])
def test_memory_is_bounded_by_the_chunk(fn):
    """20,000 users x 1,000 resamples would be 160 MB per array drawn at once; chunks of 2**18
    elements keep the peak near a few MB."""
    x = np.random.default_rng(3).random(20_000)
    tracemalloc.start()
    try:
        if fn == "bootstrap":
            bootstrap_ci(x, n=1000, chunk=2**18)
        else:
            paired_test(x, x[::-1].copy(), n=1000, chunk=2**18)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"
