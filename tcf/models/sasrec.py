"""SASRec: a causal transformer over a user's item sequence (Kang & McAuley, 2018).

Read top to bottom: item vectors from the tower, plus learned positions counted from the
most recent item, then pre-norm transformer blocks with causal attention that ignores
padding, then a final norm.  The state at position p predicts the item at p + 1.
Sequences are left-padded with item 0, so the last position is always the latest item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        assert dim % heads == 0, "model.dim must be divisible by model.n_heads"
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # each [B, L, D]
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # [B, H, L, D/H]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.mlp(self.ln2(x))


class SASRec(nn.Module):
    def __init__(self, tower: nn.Module, *, dim: int, n_layers: int, n_heads: int, dropout: float, max_len: int):
        super().__init__()
        self.tower, self.dim, self.max_len = tower, dim, max_len
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, n_heads, dropout) for _ in range(n_layers)])
        self.ln = nn.LayerNorm(dim)
        nn.init.normal_(self.pos.weight, std=0.02)

    def states(self, users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """[B] users (unused), [B, L] left-padded items -> [B, L, D] next-item states."""
        B, L = seq.shape
        x = self.tower(seq)  # [B, L, D]
        x = self.drop(x + self.pos.weight[self.max_len - L:])  # position L-1 = most recent item
        keep = ~(seq == 0)  # [B, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        mask = causal & keep[:, None, :]  # query i sees real keys j <= i
        mask = mask | torch.eye(L, dtype=torch.bool, device=seq.device)  # a padding query sees itself (no NaN)
        mask = mask[:, None]  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower(ids)

    def all_items(self) -> torch.Tensor:
        return self.tower.all()
