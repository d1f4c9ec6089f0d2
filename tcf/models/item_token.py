"""Item-token pooling for fine-tuned towers (HLLM's item-embedding token): ``encoder.pooling: item_token``.

A learned vector is appended to each item's cached states at layer L-k, at the position just
after the text's last real token (the cache stores each text from position 0, so that is
position ``length``; rotary positions follow it as they follow the text).  The top k blocks
run over text + token, and the token's final state is the item vector: the blocks learn what
to gather into it, where mean / last / cls pooling take a fixed summary.

Only fine-tuned towers (``finetune`` / ``lora``) run blocks over the token; a frozen encoder's
cached vectors were pooled before any token could be learned, so it is refused there
(``RunConfig`` says so, and :func:`tcf.encoders.pooling.pool` for extraction).

The token is ``scale * unit``: ``unit`` (N(0, 1) at the start) is the parameter, trained at ``train.lr``
with the tower's adapter (it is a new parameter, not one of the LM's); ``scale`` is a fixed buffer, the
median RMS of the cached real tokens after each text's first (decoders hold outlier activations there:
SmolLM2's first states are ~15x the others'), so the token starts at a typical token's size and AdamW's
steps of about ``lr`` per coordinate move it by about ``lr`` of its size, whatever the layer's scale.  A
parameter holding the token itself would move by ``lr / scale`` of it: next to nothing where states
are in the hundreds.
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
    """The size of a typical cached token (first ``rows`` items): the median RMS over their real tokens after
    each text's first, whose outlier activations in decoders would otherwise set it; over the first tokens
    where no text has a second; 1.0 if there are no real tokens at all."""
    real = np.asarray(tokens.mask[1:rows + 1], dtype=bool)
    later = real.copy()
    later[:, 0] = False
    states = np.asarray(tokens.states[1:rows + 1], dtype=np.float32)
    picked = states[later] if later.any() else states[real]  # [n, D]
    if not picked.size:
        return 1.0
    return float(np.median(np.sqrt((picked ** 2).mean(1))))


class ItemTokenTower(LMTower):
    """An LMTower whose pooling is the final state of a learned token appended to each text."""

    def __init__(self, lm, tokens, dim: int, **kw):
        super().__init__(lm, tokens, dim, **kw)
        self.item_token_unit = nn.Parameter(torch.randn(tokens.dim))  # [D], the trained part
        self.register_buffer("item_token_scale", torch.tensor(token_scale(tokens)))

    @property
    def item_token(self) -> torch.Tensor:
        """[D] the token appended to each text."""
        return self.item_token_scale * self.item_token_unit

    def pooled(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[c, t, D] cached states, [c, t] mask -> [c, D_lm] fp32: the item token's final state."""
        states, mask, at = append_token(states, mask, self.item_token)
        with self._autocast():
            hidden = self.lm(states, mask)  # [c, t + 1, D_lm]
        return gather_rows(hidden.float(), at)
