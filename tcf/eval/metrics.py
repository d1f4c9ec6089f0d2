"""HR@K, NDCG@K and MRR@K from the rank of one target item, with ties handled exactly.

A target's rank is ``1 + g`` where ``g`` items score strictly higher; ``t`` other items
tie with it.  Under uniform random tie-breaking the rank is ``g + 1 + U``, U uniform on
``{0..t}``, and each metric here is its exact expectation: a model that scores every item
the same gets chance-level metrics, never perfect ones.  K larger than the catalogue is
fine (the rank can never exceed it).

A target scored ``-inf`` may not be recommended (e.g. a repeat target under
``eval.mask_history: all``): it is a miss at every K (rank ``NEVER``), not a tie among the
other excluded items, which would credit it whenever K reaches past the allowed items.
"""

from __future__ import annotations

import math

import numpy as np

KS = (5, 10, 20)
METRICS = ("hr", "ndcg", "mrr")
NEVER = np.iinfo(np.int32).max  # items ranked above a target that cannot be recommended: beyond any K


def target_ranks(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` [B, C] (numpy or torch), ``targets`` [B] column indices -> (greater [B], ties [B])."""
    try:
        import torch

        if isinstance(scores, torch.Tensor):
            t = torch.as_tensor(targets, device=scores.device).long()
            s = scores.gather(1, t[:, None])
            greater = (scores > s).sum(1)
            ties = (scores == s).sum(1) - 1
            return _excluded(greater.cpu().numpy(), ties.cpu().numpy(), torch.isneginf(s[:, 0]).cpu().numpy())
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    scores = np.asarray(scores)
    s = scores[np.arange(len(scores)), np.asarray(targets)][:, None]
    return _excluded((scores > s).sum(1), (scores == s).sum(1) - 1, np.isneginf(s[:, 0]))


def _excluded(greater: np.ndarray, ties: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A target that may not be recommended ranks below everything: a miss, not a tie."""
    return np.where(excluded, NEVER, greater), np.where(excluded, 0, ties)


def _expected(greater: np.ndarray, ties: np.ndarray, k: int, gain: np.ndarray) -> np.ndarray:
    """Mean of gain[r] over ranks r in [g+1, g+t+1] that fall within K (gain[r] = 0 beyond K)."""
    cum = np.concatenate([[0.0], np.cumsum(gain[1:k + 1])])  # cum[r] = sum of gain[1..r]
    lo = np.minimum(greater, k)
    hi = np.minimum(greater + ties + 1, k)
    return (cum[hi] - cum[lo]) / (ties + 1)


def metrics_from_ranks(greater, ties, ks=KS) -> dict[str, np.ndarray]:
    """Per-sample ``hr@K``, ``ndcg@K``, ``mrr@K`` for every K."""
    greater = np.asarray(greater, dtype=np.int64)
    ties = np.asarray(ties, dtype=np.int64)
    kmax = max(ks)
    r = np.arange(kmax + 1, dtype=np.float64)
    gains = {
        "hr": np.ones(kmax + 1),
        "ndcg": np.concatenate([[0.0], 1.0 / np.log2(r[1:] + 1)]),
        "mrr": np.concatenate([[0.0], 1.0 / r[1:]]),
    }
    out = {}
    for k in ks:
        for name in METRICS:
            out[f"{name}@{k}"] = _expected(greater, ties, k, gains[name])
    return out


def metrics_from_scores(scores, targets, ks=KS) -> dict[str, np.ndarray]:
    return metrics_from_ranks(*target_ranks(scores, targets), ks=ks)


CHUNK = 1 << 22  # resampled elements held at once (~32 MB of int64 indices): memory is bounded, not users x B


def _row_chunks(n: int, width: int, chunk: int):
    """Row counts summing to ``n`` with at most ``max(chunk, width)`` elements each (a row is never split)."""
    rows = max(1, chunk // max(width, 1))
    for start in range(0, n, rows):
        yield min(rows, n - start)


def bootstrap_means(columns: list[np.ndarray], *, n: int, seed: int = 0, chunk: int = CHUNK) -> list[np.ndarray]:
    """Means of ``n`` resamples (with replacement, over samples) of each column, every column resampled
    with the same indices.  Drawn ``chunk`` elements at a time: the generator yields the same stream as
    one ``[n, samples]`` draw, so a seed gives the same resamples whatever the chunk."""
    rng = np.random.default_rng(seed)
    size = len(columns[0])
    out = [np.full(n, np.nan) for _ in columns]
    if size == 0:
        return out
    done = 0
    for rows in _row_chunks(n, size, chunk):
        idx = rng.integers(0, size, size=(rows, size))
        for col, means in zip(columns, out):
            means[done:done + rows] = col[idx].mean(1)
        done += rows
    return out


def _percentile(means: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_ci(values: np.ndarray, *, n: int = 1000, level: float = 0.95, seed: int = 0,
                 chunk: int = CHUNK) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over samples (users), from ``n`` resamples."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or n < 1:
        return (float("nan"), float("nan"))
    return _percentile(bootstrap_means([values], n=n, seed=seed, chunk=chunk)[0], level)


def paired_test(a: np.ndarray, b: np.ndarray, *, n: int = 10000, seed: int = 0, chunk: int = CHUNK) -> dict:
    """Paired comparison of two runs on the same users: mean difference, its bootstrap CI, and a
    two-sided sign-flip permutation p-value (``n`` sign patterns, drawn ``chunk`` elements at a time); the
    p-value is None (no test) when a value is not finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same users in both runs ({a.shape} vs {b.shape})")
    d = a - b
    if not np.isfinite(d).all():  # a NaN value: no test (its mean would make every sign flip look small)
        return {"mean_diff": float("nan"), "ci95": [float("nan"), float("nan")], "p_value": None, "n": int(len(d))}
    rng = np.random.default_rng(seed)
    extreme = 0
    for rows in _row_chunks(n, len(d), chunk):
        null = np.abs((rng.choice([-1.0, 1.0], size=(rows, len(d))) * d).mean(1))
        extreme += int(np.sum(null >= abs(d.mean()) - 1e-12))
    p = (1 + extreme) / (n + 1)
    lo, hi = bootstrap_ci(d, n=min(n, 2000), seed=seed, chunk=chunk)
    return {"mean_diff": float(d.mean()), "ci95": [lo, hi], "p_value": float(p), "n": int(len(d))}


def summarize(per_sample: dict[str, np.ndarray], *, ci: bool = True, n: int = 1000, seed: int = 0,
              chunk: int = CHUNK) -> dict[str, dict]:
    """{metric: {"mean", "ci95"}} over samples; the CIs from ``n`` resamples (``eval.bootstrap``), one
    set of resampled users shared by every metric (as separate draws with the same seed would be)."""
    out = {name: {"mean": float(np.mean(v)) if len(v) else float("nan")} for name, v in per_sample.items()}
    if not ci or n < 1:
        return out
    by_size: dict[int, list[str]] = {}  # in practice one size: every metric is over the same users
    for name, v in per_sample.items():
        by_size.setdefault(len(v), []).append(name)
    for names in by_size.values():
        columns = [np.asarray(per_sample[k], dtype=np.float64) for k in names]
        for name, means in zip(names, bootstrap_means(columns, n=n, seed=seed, chunk=chunk)):
            out[name]["ci95"] = list(_percentile(means, 0.95))
    return out


# ---------------------------------------------------------------- tests over a family of comparisons

def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the given order (``None``, no test, stays ``None`` and is not
    counted): the i-th smallest of m is multiplied by m - i + 1, made monotone, capped at 1.  Rejecting
    where adjusted p < alpha keeps the chance of any false claim in the family at most alpha."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_pvalue(t: float, df: float) -> float | None:
    """Two-sided p-value of Student's t with ``df`` (not necessarily whole) degrees of freedom, without scipy.
    None (no test) when ``t`` or ``df`` is not a finite number (a NaN mean, an overflow): never "significant"."""
    if not (math.isfinite(t) and math.isfinite(df)) or df <= 0:
        return None
    return _betainc(df / 2, 0.5, df / (df + t * t))


def normal_pvalue(z: float) -> float | None:
    """Two-sided p-value of a standard normal statistic; None (no test) when ``z`` is not finite."""
    return math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else None
