"""The training losses against known answers: the logQ correction recovers the label distribution,
SASRec's negatives come from outside the user's items."""

from __future__ import annotations

import math

import pytest
import torch

from tcf.train.losses import full_ce, inbatch, log_inclusion, outside_negatives, sampled_bce

P_TRUE = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01])


def test_log_inclusion_by_hand():
    log_p = torch.log(torch.tensor([0.3, 0.01, 1.0]))
    assert log_inclusion(log_p, 1).tolist() == pytest.approx(log_p.tolist(), abs=1e-6)  # one draw: p itself
    want = [math.log(1 - 0.7 ** 8), math.log(1 - 0.99 ** 8), 0.0]
    assert log_inclusion(log_p, 8).tolist() == pytest.approx(want, abs=1e-6)


def fit_item_logits(loss_fn, draws: int, steps: int = 600, seed: int = 0) -> torch.Tensor:
    """Learn one logit per item from steps of ``draws`` labels drawn from P_TRUE -> softmax of the logits."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.zeros(len(P_TRUE) + 1, requires_grad=True)  # row 0: padding
    opt = torch.optim.Adam([logits], lr=0.05)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, steps)  # anneal: the noise of small steps averages out
    log_pop = torch.log(torch.cat([torch.ones(1), P_TRUE]))
    for _ in range(steps):
        y = torch.multinomial(P_TRUE, draws, replacement=True, generator=g) + 1  # [P]
        loss = loss_fn(torch.ones(draws, 1), y, lambda c: logits[c][:, None], log_pop)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.softmax(logits[1:].detach(), 0)


@pytest.mark.parametrize("draws", [8, 64, 512])
def test_inbatch_with_logq_learns_the_label_distribution_like_full_softmax(draws):
    """A user-independent model trained on labels drawn from p must learn p.  Full softmax does; so must
    the in-batch loss once its correction matches its candidate set (unique items).  Subtracting log p from
    unique columns (the old correction) learns ~p^2 / sum p^2 instead: 0.52 for the 0.3 item at 64 draws."""
    none = torch.zeros(1, 1, dtype=torch.long)

    def inb(h, y, vectors_of, log_pop):
        return inbatch(h, y, torch.zeros(len(y), dtype=torch.long), none, vectors_of, log_pop)

    def full(h, y, vectors_of, log_pop):
        return full_ce(h, y, vectors_of(torch.arange(len(P_TRUE) + 1)))

    q_full, q_inb = fit_item_logits(full, draws), fit_item_logits(inb, draws)
    assert (q_full - P_TRUE).abs().max() < 0.03
    assert (q_inb - P_TRUE).abs().max() < 0.03, q_inb.tolist()


def test_inbatch_masks_the_users_other_items_but_never_the_label():
    h = torch.tensor([[1.0], [1.0]])
    y = torch.tensor([2, 3])
    known = torch.tensor([[2, 3], [5, 0]])  # user 0 has both labels; user 1 neither
    vecs = lambda c: c.float()[:, None]  # noqa: E731
    loss = inbatch(h, y, torch.tensor([0, 1]), known, vecs, None)
    # row 0 (label 2): item 3 is its user's own item -> masked, the softmax is over {2}: loss 0
    # row 1 (label 3): candidates {2, 3}, logits 2 and 3
    want = (0.0 + (math.log(math.exp(2) + math.exp(3)) - 3)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6)


def test_bce_negatives_come_from_outside_the_users_items():
    """SASRec samples a negative the user has not interacted with; a negative from the user's own items
    pushes down an item the user does like."""
    n_items = 6
    known = torch.tensor([[1, 2, 3, 4, 0], [6, 0, 0, 0, 0]])
    row = torch.tensor([0] * 500 + [1] * 500)
    y = torch.where(row == 0, 2, 6)
    neg = outside_negatives(y, row, known, n_items, torch.Generator().manual_seed(0))
    assert set(neg[row == 0].tolist()) == {5, 6}
    assert set(neg[row == 1].tolist()) == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="no negative outside"):
        outside_negatives(torch.tensor([1]), torch.tensor([0]), torch.tensor([[1, 2, 3, 4, 5, 6]]), n_items)
    h = torch.randn(len(y), 4)
    table = torch.randn(n_items + 1, 4)
    assert torch.isfinite(sampled_bce(h, y, row, known, lambda i: table[i], n_items))
