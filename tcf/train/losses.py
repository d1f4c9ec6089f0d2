"""Losses over next-item states ``h`` [P, D] with labels ``y`` [P] (positions with a label only).

* ``ce``       softmax over the whole catalogue
* ``inbatch``  softmax over the labels in the batch, each item one column, with the logQ
               correction for that candidate set, and the user's own other items masked out
               as negatives (the TCF reference's default)
* ``bce``      one negative per position, drawn uniformly from the items outside the user's
               training sequence (SASRec / MoRec)

The logQ correction.  In-batch softmax is a sampled softmax whose candidates are the step's
labels, and a sampled softmax is unbiased only when each candidate's logit is lowered by the
log of its expected count in the sample.  The labels of a step are P draws from the training
label distribution ``p``; made unique (one column per item, as here), item i is a candidate
with probability ``1 - (1 - p_i)^P``, which is what is subtracted.  ``-log p_i`` is the
correction for P columns *with* repetitions; applied to unique columns it counts a popular
item's popularity twice (at batch 256 on ml-100k most popular items are in every step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_ce(h: torch.Tensor, y: torch.Tensor, items: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = h @ items.T / temperature  # [P, N + 1]
    logits[:, 0] = float("-inf")  # padding is never a target
    return F.cross_entropy(logits, y)


def own_items_mask(cands: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """[M] sorted candidates, [B, K] each user's items -> [B, M] True where the user has the candidate."""
    M = len(cands)
    pos = torch.searchsorted(cands, known).clamp_max(M - 1)
    hit = (cands[pos] == known) & (known != 0)
    mask = torch.zeros(known.shape[0], M, dtype=torch.bool, device=known.device)
    rows = torch.arange(known.shape[0], device=known.device)[:, None].expand_as(known)
    mask[rows[hit], pos[hit]] = True
    return mask


def log_inclusion(log_p: torch.Tensor, draws: int | float) -> torch.Tensor:
    """log P(an item of label probability p is among ``draws`` i.i.d. labels) = log(1 - (1 - p)^draws)."""
    p = log_p.exp().clamp(max=1.0)
    miss = draws * torch.log1p(-p)  # log (1 - p)^draws
    return torch.log((-torch.expm1(miss)).clamp_min(torch.finfo(log_p.dtype).tiny))


def inbatch(h: torch.Tensor, y: torch.Tensor, row: torch.Tensor, known: torch.Tensor, vectors_of,
            log_pop: torch.Tensor | None, temperature: float = 1.0, gather=None) -> torch.Tensor:
    """``row`` [P]: the batch row (user) of each position; ``known`` [B, K]: each user's items;
    ``log_pop`` [N + 1]: log of each item's share of the training labels (None: no correction);
    ``gather``: under data parallelism, ``(cands, vectors, P) -> (every rank's cands, vectors, P)``
    so that the negatives are the labels of the whole step, not only of this process's part."""
    cands = torch.unique(y, sorted=True)  # [M]
    vecs, draws = vectors_of(cands), len(y)  # [M, D]
    if gather is not None:
        cands, vecs, draws = gather(cands, vecs, draws)  # [M'] sorted, [M', D], labels in the step
    label = torch.searchsorted(cands, y)  # [P] column of each position's own label
    logits = h @ vecs.T / temperature  # [P, M]
    if log_pop is not None:
        logits = logits - log_inclusion(log_pop[cands], draws)
    own = own_items_mask(cands, known)[row]  # [P, M]
    own[torch.arange(len(y), device=y.device), label] = False  # never mask the position's own label
    logits = logits.masked_fill(own, float("-inf"))
    return F.cross_entropy(logits, label)


def outside_negatives(y: torch.Tensor, row: torch.Tensor, known: torch.Tensor, n_items: int, generator=None,
                      tries: int = 100) -> torch.Tensor:
    """[P] items drawn uniformly from 1..N outside the position's user's training items ``known[row]``
    (and never the label), redrawing the ones that hit; SASRec's negative sampler."""
    def draw(n: int) -> torch.Tensor:
        return torch.randint(1, n_items + 1, (n,), device=y.device, generator=generator)

    neg = draw(len(y))
    for _ in range(tries):
        bad = (neg[:, None] == known[row]).any(1) | (neg == y)
        if not bool(bad.any()):
            return neg
        neg[bad] = draw(int(bad.sum()))
    raise ValueError(f"bce: no negative outside the user's items after {tries} draws (a user has nearly every "
                     f"one of the {n_items} items); use train.loss=ce or inbatch")


def sampled_bce(h: torch.Tensor, y: torch.Tensor, row: torch.Tensor, known: torch.Tensor, vectors_of, n_items: int,
                generator=None) -> torch.Tensor:
    neg = outside_negatives(y, row, known, n_items, generator)
    pos_logit = (h * vectors_of(y)).sum(-1)
    neg_logit = (h * vectors_of(neg)).sum(-1)
    return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + \
        F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
