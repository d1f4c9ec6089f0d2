"""Losses over next-item states ``h`` [P, D] with labels ``y`` [P] (positions with a label only).

* ``ce``       softmax over the whole catalogue
* ``inbatch``  softmax over the labels in the batch, minus log popularity (logQ correction),
               with the user's own other items masked out as negatives (the TCF reference's default)
* ``bce``      one uniformly sampled negative per position (SASRec / MoRec)
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


def inbatch(h: torch.Tensor, y: torch.Tensor, row: torch.Tensor, known: torch.Tensor, vectors_of,
            log_pop: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """``row`` [P]: the batch row (user) of each position; ``known`` [B, K]: each user's items."""
    cands, label = torch.unique(y, sorted=True, return_inverse=True)  # [M], [P]
    logits = h @ vectors_of(cands).T / temperature  # [P, M]
    if log_pop is not None:
        logits = logits - log_pop[cands]
    own = own_items_mask(cands, known)[row]  # [P, M]
    own[torch.arange(len(y), device=y.device), label] = False  # never mask the position's own label
    logits = logits.masked_fill(own, float("-inf"))
    return F.cross_entropy(logits, label)


def sampled_bce(h: torch.Tensor, y: torch.Tensor, vectors_of, n_items: int, generator=None) -> torch.Tensor:
    neg = torch.randint(1, n_items + 1, y.shape, device=y.device, generator=generator)
    neg = torch.where(neg == y, neg % n_items + 1, neg)  # never the positive itself
    pos_logit = (h * vectors_of(y)).sum(-1)
    neg_logit = (h * vectors_of(neg)).sum(-1)
    return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + \
        F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
