"""HR@K, NDCG@K and MRR@K from the rank of one target item, with ties handled exactly.

A target's rank is ``1 + g`` where ``g`` items score strictly higher; ``t`` other items
tie with it.  Under uniform random tie-breaking the rank is ``g + 1 + U``, U uniform on
``{0..t}``, and each metric here is its exact expectation: a model that scores every item
the same gets chance-level metrics, never perfect ones.  K larger than the catalogue is
fine (the rank can never exceed it).
"""

from __future__ import annotations

import numpy as np

KS = (5, 10, 20)
METRICS = ("hr", "ndcg", "mrr")


def target_ranks(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` [B, C] (numpy or torch), ``targets`` [B] column indices -> (greater [B], ties [B])."""
    try:
        import torch

        if isinstance(scores, torch.Tensor):
            t = torch.as_tensor(targets, device=scores.device).long()
            s = scores.gather(1, t[:, None])
            greater = (scores > s).sum(1)
            ties = (scores == s).sum(1) - 1
            return greater.cpu().numpy(), ties.cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    scores = np.asarray(scores)
    s = scores[np.arange(len(scores)), np.asarray(targets)][:, None]
    return (scores > s).sum(1), (scores == s).sum(1) - 1


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


def bootstrap_ci(values: np.ndarray, *, n: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over samples (users)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_test(a: np.ndarray, b: np.ndarray, *, n: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of two runs on the same users: mean difference, its bootstrap CI, and a
    two-sided sign-flip permutation p-value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same users in both runs ({a.shape} vs {b.shape})")
    d = a - b
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n, len(d)))
    null = np.abs((signs * d).mean(1))
    p = (1 + np.sum(null >= abs(d.mean()) - 1e-12)) / (n + 1)
    lo, hi = bootstrap_ci(d, n=min(n, 2000), seed=seed)
    return {"mean_diff": float(d.mean()), "ci95": [lo, hi], "p_value": float(p), "n": int(len(d))}


def summarize(per_sample: dict[str, np.ndarray], *, ci: bool = True, seed: int = 0) -> dict[str, dict]:
    """{metric: {"mean", "ci95"}} over samples."""
    out = {}
    for name, v in per_sample.items():
        entry = {"mean": float(np.mean(v)) if len(v) else float("nan")}
        if ci:
            entry["ci95"] = list(bootstrap_ci(v, seed=seed))
        out[name] = entry
    return out
