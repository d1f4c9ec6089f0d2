"""One evaluation function for validation and test: leave-one-out, full ranking over all items.

Scores are the dot products of each user's state with every item vector, computed in
user chunks; padding (item 0) is never ranked, and with ``mask_history`` the user's
earlier items (all but the target itself) cannot be recommended.

``ranker="faiss"`` ranks with an inner-product FAISS index over the item vectors
instead (``flat``: exact; ``hnsw``: approximate), the path for catalogues too large
to score densely: it retrieves the top ``max(ks) + h`` items (h = the most history
items any user in the chunk has masked), drops the masked ones, and finds the
target's rank among the rest.  A target outside them ranks below ``max(ks)``, so
every metric@K is the matmul's; only score ties at the retrieval cut-off can differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tcf.eval.metrics import metrics_from_ranks, metrics_from_scores, summarize


@dataclass
class EvalResult:
    split: str
    users: np.ndarray
    targets: np.ndarray
    per_user: dict[str, np.ndarray]  # metric -> value per user

    def mean(self, metric: str = "ndcg@10") -> float:
        return float(np.mean(self.per_user[metric]))


def score_users(model, data, users: np.ndarray, split: str, *, max_len: int, mask_history: bool, device):
    """-> (scores [B, N + 1] with -inf where an item may not be recommended, targets [B])."""
    u, inputs, targets, history = (t.to(device) for t in data.eval_batch(users, split, max_len))
    state = model.states(u, inputs)[:, -1]  # [B, D] state after the latest item
    scores = state.float() @ model.all_items().float().T  # [B, N + 1]
    scores[:, 0] = float("-inf")
    if mask_history:
        drop = (history != 0) & (history != targets[:, None])
        rows = torch.arange(len(users), device=device)[:, None].expand_as(history)
        scores[rows[drop], history[drop]] = float("-inf")
    return scores, targets


def item_index(model, kind: str = "flat"):
    """A FAISS inner-product index over the model's item vectors (row 0, padding, left out)."""
    from tcf.encoders.index import IndexSpec, ItemIndex

    items = model.all_items().detach().float().cpu().numpy()
    return ItemIndex.build(items, IndexSpec(type=kind, normalize=False))


def faiss_ranks(index, model, data, users: np.ndarray, split: str, *, kmax: int, max_len: int,
                mask_history: bool, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (greater [B], ties [B], targets [B]): the target's rank among the retrieved, unmasked items."""
    u, inputs, targets, history = (t.to(device) for t in data.eval_batch(users, split, max_len))
    state = model.states(u, inputs)[:, -1].float().cpu().numpy()  # [B, D]
    targets, history = targets.cpu().numpy(), history.cpu().numpy()
    masked = np.zeros((len(users), index.n_items + 1), dtype=bool)  # [B, N + 1]
    if mask_history:
        rows = np.broadcast_to(np.arange(len(users))[:, None], history.shape)
        drop = (history != 0) & (history != targets[:, None])
        masked[rows[drop], history[drop]] = True
    depth = min(kmax + int(masked.sum(1).max()), index.n_items)
    scores, ids = index.search(state, depth)  # [B, R], ids 1..N (0 = no result)
    rows = np.arange(len(users))[:, None]
    keep = (ids != 0) & ~masked[rows, ids]
    hit = keep & (ids == targets[:, None])
    found = hit.any(1)
    own = np.where(found, scores[rows[:, 0], hit.argmax(1)], -np.inf)  # outside the list: below every kept item
    greater = ((scores > own[:, None]) & keep).sum(1)
    ties = ((scores == own[:, None]) & keep).sum(1) - found
    return greater, ties, targets


@torch.no_grad()
def evaluate(model, data, split: str, *, ks=(5, 10, 20), max_len: int = 50, mask_history: bool = True,
             batch_users: int = 512, device="cpu", users: np.ndarray | None = None, ranker: str = "matmul",
             faiss_index: str = "flat") -> EvalResult:
    """``ranker``: ``matmul`` (every item scored) or ``faiss`` (an index of kind ``faiss_index``)."""
    if ranker not in ("matmul", "faiss"):
        raise ValueError(f"ranker must be matmul or faiss, got {ranker!r}")
    was_training = model.training
    model.eval()
    users = data.users if users is None else users
    index = item_index(model, faiss_index) if ranker == "faiss" else None  # once per evaluation
    parts: dict[str, list] = {}
    targets = []
    for start in range(0, len(users), batch_users):
        chunk = users[start:start + batch_users]
        if index is None:
            scores, tgt = score_users(model, data, chunk, split, max_len=max_len, mask_history=mask_history,
                                      device=device)
            per_user, tgt = metrics_from_scores(scores, tgt, ks=ks), tgt.cpu().numpy()
        else:
            greater, ties, tgt = faiss_ranks(index, model, data, chunk, split, kmax=max(ks), max_len=max_len,
                                             mask_history=mask_history, device=device)
            per_user = metrics_from_ranks(greater, ties, ks=ks)
        for name, v in per_user.items():
            parts.setdefault(name, []).append(v)
        targets.append(tgt)
    model.train(was_training)
    per_user = {k: np.concatenate(v) for k, v in parts.items()}
    return EvalResult(split, np.asarray(users), np.concatenate(targets), per_user)


def report(result: EvalResult, data, *, bootstrap: int, cold_max_count: int, history_buckets, seed: int = 0) -> dict:
    """Means with 95% CIs, plus slices by target popularity and by history length."""
    out = {"n_users": int(len(result.users)), "metrics": summarize(result.per_user, ci=bootstrap > 0, seed=seed)}
    counts = data.train_counts[result.targets]
    lengths = data.history_lengths(result.split)[result.users - 1]
    slices = {"cold": counts <= cold_max_count, "warm": counts > cold_max_count}
    edges = [0, *history_buckets, np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"history {lo + 1}-{int(hi)}" if np.isfinite(hi) else f"history >{lo}"
        slices[name] = (lengths > lo) & (lengths <= hi)
    out["slices"] = {}
    for name, sel in slices.items():
        sub = {k: v[sel] for k, v in result.per_user.items()}
        out["slices"][name] = {"n_users": int(sel.sum()),
                               "metrics": {k: s["mean"] for k, s in summarize(sub, ci=False).items()}}
    out["cold_definition"] = f"target has <= {cold_max_count} training interactions"
    return out
