"""Item towers: item ids -> vectors of the head's dimension.

* ``id``       learned item-ID embeddings (the IDRec baseline)
* ``frozen``   cached pooled LLM vectors through an MLP adapter
* ``id+text``  both, fused by ``add`` or ``concat`` + linear

Every tower maps ``[...] item ids -> [..., d]`` and gives the whole catalogue with
:meth:`all` (row 0 = padding) for full ranking.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tcf.errors import ConfigError

ADAPTERS = ("mlp", "tcf")


def adapter(d_in: int, d_out: int, layers: int, dropout: float, style: str = "mlp") -> nn.Module:
    """Text vectors [..., d_in] -> [..., d_out].

    ``mlp``: ``layers`` = 1 is one linear map; more: Linear -> GELU -> Dropout -> ... -> Linear.
    ``tcf``: the TCF reference's projection (``MLPLayers`` with GELU): every layer Linear -> GELU, the
    last one included, dropout 0.1 before each layer after the first."""
    if layers < 1:
        raise ConfigError(f"model.adapter_layers must be >= 1, got {layers}")
    if style not in ADAPTERS:
        raise ConfigError(f"model.adapter must be one of {list(ADAPTERS)}, got {style!r}")
    if style == "tcf":
        mods = [nn.Linear(d_in, d_out), nn.GELU()]
        for _ in range(layers - 1):
            mods += [nn.Dropout(0.1), nn.Linear(d_out, d_out), nn.GELU()]
        return nn.Sequential(*mods)
    mods: list[nn.Module] = []
    width = d_in
    for _ in range(layers - 1):
        mods += [nn.Linear(width, d_out), nn.GELU(), nn.Dropout(dropout)]
        width = d_out
    mods.append(nn.Linear(width, d_out))
    return nn.Sequential(*mods)


class IDTower(nn.Module):
    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=0.02)
        with torch.no_grad():
            self.emb.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)

    def all(self) -> torch.Tensor:
        return self.emb.weight


class FrozenTextTower(nn.Module):
    """Cached vectors [N + 1, D] (not trained) -> adapter -> [N + 1, d]."""

    def __init__(self, vectors: np.ndarray, dim: int, layers: int = 1, dropout: float = 0.0,
                 normalize: bool = True, style: str = "mlp"):
        super().__init__()
        v = torch.tensor(np.asarray(vectors, dtype=np.float32))  # a copy: cache files are read-only maps
        if normalize:
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("vectors", v, persistent=False)  # re-read from the cache, never saved
        self.adapter = adapter(v.shape[1], dim, layers, dropout, style)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.adapter(self.vectors[ids])
        return out * (ids != 0).unsqueeze(-1)  # padding stays zero

    def all(self) -> torch.Tensor:
        out = self.adapter(self.vectors)
        return torch.cat([torch.zeros_like(out[:1]), out[1:]])


class FusedTower(nn.Module):
    """ID and text vectors, added or concatenated and projected."""

    def __init__(self, id_tower: IDTower, text_tower: nn.Module, dim: int, fusion: str = "add"):
        super().__init__()
        if fusion not in ("add", "concat"):
            raise ConfigError(f"model.fusion must be add or concat, got {fusion!r}")
        self.id, self.text, self.fusion = id_tower, text_tower, fusion
        self.proj = nn.Linear(2 * dim, dim) if fusion == "concat" else None

    def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b if self.proj is None else self.proj(torch.cat([a, b], dim=-1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.id(ids), self.text(ids)) * (ids != 0).unsqueeze(-1)

    def all(self) -> torch.Tensor:
        out = self._fuse(self.id.all(), self.text.all())
        return torch.cat([torch.zeros_like(out[:1]), out[1:]])
