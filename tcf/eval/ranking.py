"""One evaluation function for validation and test: leave-one-out, full ranking over all items.

Scores are the dot products of each user's state with every item vector, computed in
user chunks; padding (item 0) is never ranked.  ``mask_history`` names which of the
user's earlier items cannot be recommended:

- ``all`` (default): every earlier item.  The mask never looks at the label, so a model
  gains nothing from scoring seen items high; a *repeat* target (the target is already
  in the history, common on purchase data such as H&M, absent from ml-100k) cannot be
  recommended and counts as a miss.  On data without repeats it is the TCF protocol.
- ``all_but_target``: every earlier item except the target itself, the rule of the TCF
  reference code.  The label decides the mask: on a repeat target every other seen item
  is removed and the target is left alone among them, so a model that ranks history
  first gets repeats at rank 1.  Kept to reproduce published numbers, never a default.
- ``none``: nothing masked; seen items compete with unseen ones.  Leak-free, and the
  protocol that can credit a model for predicting a repeat.

The old booleans are accepted: ``true`` is ``all``, ``false`` is ``none``.  Every report
counts the repeat targets and gives ``repeat`` / ``non-repeat`` slices; the non-repeat
slice is the number comparable across rules and datasets.

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

from tcf.eval.metrics import NEVER, metrics_from_ranks, metrics_from_scores, summarize
from tcf.run.config import mask_rule
from tcf.run.seqdata import SeqData


@dataclass
class EvalResult:
    split: str
    users: np.ndarray
    targets: np.ndarray
    per_user: dict[str, np.ndarray]  # metric -> value per user
    mask_history: str = "all"  # the rule the ranking used (see the module docstring)

    def mean(self, metric: str = "ndcg@10") -> float:
        return float(np.mean(self.per_user[metric]))


def history_drop(history, targets, rule: str):
    """[B, H] (numpy or torch): True where a history item may not be recommended under ``rule``."""
    drop = history != 0
    if rule == "all_but_target":
        drop = drop & (history != targets[:, None])
    return drop


def score_users(model, data, users: np.ndarray, split: str, *, max_len: int, mask_history: str | bool, device):
    """-> (scores [B, N + 1] with -inf where an item may not be recommended, targets [B])."""
    rule = mask_rule(mask_history)
    u, inputs, targets, history = (t.to(device) for t in data.eval_batch(users, split, max_len))
    state = model.states(u, inputs)[:, -1]  # [B, D] state after the latest item
    scores = state.float() @ model.all_items().float().T  # [B, N + 1]
    scores[:, 0] = float("-inf")
    if rule != "none":
        drop = history_drop(history, targets, rule)
        rows = torch.arange(len(users), device=device)[:, None].expand_as(history)
        scores[rows[drop], history[drop]] = float("-inf")
    return scores, targets


def repeat_targets(data, users: np.ndarray, split: str) -> np.ndarray:
    """[U] bool: the split's target is already among the user's earlier items."""
    cut = SeqData.target_offset(split)
    return np.array([bool(np.any(data.seqs[u][:-cut] == data.seqs[u][-cut])) for u in users], dtype=bool)


def item_index(model, kind: str = "flat"):
    """A FAISS inner-product index over the model's item vectors (row 0, padding, left out)."""
    from tcf.encoders.index import IndexSpec, ItemIndex

    items = model.all_items().detach().float().cpu().numpy()
    return ItemIndex.build(items, IndexSpec(type=kind, normalize=False))


def faiss_ranks(index, model, data, users: np.ndarray, split: str, *, kmax: int, max_len: int,
                mask_history: str | bool, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (greater [B], ties [B], targets [B]): the target's rank among the retrieved, unmasked items
    (a masked target, a repeat under ``all``, ranks ``NEVER``, as in the matmul path)."""
    rule = mask_rule(mask_history)
    u, inputs, targets, history = (t.to(device) for t in data.eval_batch(users, split, max_len))
    state = model.states(u, inputs)[:, -1].float().cpu().numpy()  # [B, D]
    targets, history = targets.cpu().numpy(), history.cpu().numpy()
    masked = np.zeros((len(users), index.n_items + 1), dtype=bool)  # [B, N + 1]
    if rule != "none":
        rows = np.broadcast_to(np.arange(len(users))[:, None], history.shape)
        drop = history_drop(history, targets, rule)
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
    excluded = masked[rows[:, 0], targets]
    return np.where(excluded, NEVER, greater), np.where(excluded, 0, ties), targets


@torch.no_grad()
def evaluate(model, data, split: str, *, ks=(5, 10, 20), max_len: int = 50, mask_history: str | bool = "all",
             batch_users: int = 512, device="cpu", users: np.ndarray | None = None, ranker: str = "matmul",
             faiss_index: str = "flat") -> EvalResult:
    """``ranker``: ``matmul`` (every item scored) or ``faiss`` (an index of kind ``faiss_index``)."""
    mask_history = mask_rule(mask_history)
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
    return EvalResult(split, np.asarray(users), np.concatenate(targets), per_user, mask_history)


def report(result: EvalResult, data, *, bootstrap: int, cold_max_count: int, history_buckets, seed: int = 0) -> dict:
    """Means with 95% CIs from ``bootstrap`` resamples (0: none), plus slices by target popularity, by
    history length and by whether the target repeats an earlier item (counted, so a reader sees how
    much of the number the masking rule decides)."""
    repeat = repeat_targets(data, result.users, result.split)
    out = {"n_users": int(len(result.users)), "mask_history": result.mask_history, "bootstrap": int(bootstrap),
           "n_repeat_targets": int(repeat.sum()),
           "metrics": summarize(result.per_user, ci=bootstrap > 0, n=bootstrap, seed=seed)}
    counts = data.train_counts[result.targets]
    lengths = data.history_lengths(result.split)[result.users - 1]
    slices = {"cold": counts <= cold_max_count, "warm": counts > cold_max_count,
              "repeat": repeat, "non-repeat": ~repeat}
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
    out["repeat_definition"] = ("target is already among the user's earlier items"
                                + ("; it cannot be recommended under mask_history all, so it counts as a miss"
                                   if result.mask_history == "all" else ""))
    return out
