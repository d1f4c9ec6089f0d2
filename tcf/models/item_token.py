"""Item-token pooling for fine-tuned towers (HLLM's item-embedding token): ``encoder.pooling: item_token``.

A learned vector is appended to each item's cached states at layer L-k, at the position just
after the text's last real token (the cache stores each text from position 0, so that is
position ``length``; rotary positions follow it as they follow the text).  The top k blocks
run over text + token, and the token's final state is the item vector: the blocks learn what
to gather into it, where mean / last / cls pooling take a fixed summary.

Only fine-tuned towers (``finetune`` / ``lora``) run blocks over the token; a frozen encoder's
cached vectors were pooled before any token could be learned, so it is refused there
(``RunConfig`` says so, and :func:`tcf.encoders.pooling.pool` for extraction).  The token trains at ``train.lr`` with the tower's adapter (it is a
new parameter, not one of the LM's).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tcf.encoders.pooling import gather_rows
from tcf.models.lm_tower import LMTower


def append_token(states: torch.Tensor, mask: torch.Tensor, token: torch.Tensor):
    """[c, t, D] states stored from position 0, [c, t] mask, [D] token -> ([c, t + 1, D], [c, t + 1], [c] index
    of the token: each text's length, the position after its last real token)."""
    c, t, d = states.shape
    at = mask.sum(1).long()  # [c]
    states = torch.cat([states, states.new_zeros(c, 1, d)], 1)  # [c, t + 1, D]
    mask = torch.cat([mask, mask.new_zeros(c, 1)], 1)
    here = torch.arange(t + 1, device=states.device)[None, :] == at[:, None]  # [c, t + 1]
    states = torch.where(here[..., None], token.to(states.dtype), states)
    return states, mask | here.to(mask.dtype), at


def token_scale(tokens, rows: int = 256) -> float:
    """The spread of the cached states (first ``rows`` items' real tokens): the learned token starts at it."""
    mask = np.asarray(tokens.mask[1:rows + 1], dtype=bool)
    states = np.asarray(tokens.states[1:rows + 1], dtype=np.float32)[mask]
    return float(states.std()) if states.size else 1.0


class ItemTokenTower(LMTower):
    """An LMTower whose pooling is the final state of a learned token appended to each text."""

    def __init__(self, lm, tokens, dim: int, **kw):
        super().__init__(lm, tokens, dim, **kw)
        self.item_token = nn.Parameter(torch.randn(tokens.dim) * token_scale(tokens))  # [D]

    def pooled(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[c, t, D] cached states, [c, t] mask -> [c, D_lm] fp32: the item token's final state."""
        states, mask, at = append_token(states, mask, self.item_token)
        with self._autocast():
            hidden = self.lm(states, mask)  # [c, t + 1, D_lm]
        return gather_rows(hidden.float(), at)
