"""Non-learned baselines that fit the head contract, so one evaluation function scores them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Popularity(nn.Module):
    """Scores every item by its number of training interactions (the same list for every user)."""

    def __init__(self, train_counts: np.ndarray):
        super().__init__()
        self.register_buffer("counts", torch.as_tensor(train_counts, dtype=torch.float32)[:, None])  # [N + 1, 1]

    def states(self, users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return torch.ones(*seq.shape, 1, device=seq.device)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.counts[ids]

    def all_items(self) -> torch.Tensor:
        return self.counts
