"""DSSM: two towers scored by a dot product.

User tower: a learned user-ID embedding (as in the TCF reference), or the running mean of
the vectors of the items the user has had so far (``user_tower: mean``; works for users
unseen in training).  Item tower: any tower from :mod:`tcf.models.towers`.  Optional
MLP layers on both sides.
"""

from __future__ import annotations

import torch
from torch import nn

from tcf.errors import ConfigError


def mlp(dim: int, layers: int, dropout: float) -> nn.Module:
    """``layers`` linear maps with GELU and dropout between them (0: identity)."""
    if layers == 0:
        return nn.Identity()
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*mods, nn.Linear(dim, dim))


class DSSM(nn.Module):
    def __init__(self, tower: nn.Module, *, n_users: int, dim: int, user_tower: str = "id", mlp_layers: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        if user_tower not in ("id", "mean"):
            raise ConfigError(f"model.user_tower must be id or mean, got {user_tower!r}")
        self.tower, self.user_tower = tower, user_tower
        self.users = nn.Embedding(n_users + 1, dim) if user_tower == "id" else None
        if self.users is not None:
            nn.init.normal_(self.users.weight, std=0.02)
        self.user_mlp = mlp(dim, mlp_layers, dropout)
        self.item_mlp = mlp(dim, mlp_layers, dropout)

    def states(self, users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """[B] users, [B, L] left-padded items -> [B, L, D]: the user's state after each position."""
        B, L = seq.shape
        if self.users is not None:
            u = self.users(users)[:, None, :].expand(B, L, -1)
        else:
            v = self.tower(seq)  # padding rows are zero
            count = (seq != 0).cumsum(1).clamp_min(1).unsqueeze(-1)
            u = v.cumsum(1) / count  # running mean of the history up to each position
        return self.user_mlp(u)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item_mlp(self.tower(ids))

    def all_items(self) -> torch.Tensor:
        return self.item_mlp(self.tower.all())
