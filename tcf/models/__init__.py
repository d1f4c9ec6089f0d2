"""Recommender heads (SASRec, DSSM) over item towers (ID, frozen text, ID + text, fine-tuned / LoRA top LM layers)."""

from __future__ import annotations

import numpy as np

from tcf.extensions import HEADS
from tcf.models.dssm import DSSM
from tcf.models.sasrec import SASRec
from tcf.models.towers import FrozenTextTower, FusedTower, IDTower
from tcf.run.config import LM_TOWERS, POOLED_TOWERS


def build_model(cfg, n_items: int, n_users: int, text_vectors: np.ndarray | None = None):
    """``cfg``: a RunConfig; ``text_vectors``: the cache matrix [N + 1, D] for text towers, or for ``finetune`` /
    ``lora`` the token-state cache entry: what :func:`tcf.models.inputs.text_inputs` gives."""
    m = cfg.model
    if m.tower in POOLED_TOWERS and text_vectors is None:
        raise ValueError("a text tower needs the cached text vectors")
    if m.tower == "id":
        tower = IDTower(n_items, m.dim)
    elif m.tower in LM_TOWERS:
        if text_vectors is None:
            raise ValueError(f"the {m.tower} tower needs the token-state cache entry")
        from tcf.models.item_token import ItemTokenTower
        from tcf.models.lm_tower import LMTower, build_lm_tower

        # item_token pooling: a learned token appended to each text (HLLM's item token), its own tower class
        kind = ItemTokenTower if cfg.encoder.pooling == "item_token" else LMTower
        tower = build_lm_tower(cfg, text_vectors, kind)
    else:
        text = FrozenTextTower(text_vectors, m.dim, m.adapter_layers, m.dropout, m.normalize_text, m.adapter)
        tower = text if m.tower == "frozen" else FusedTower(IDTower(n_items, m.dim), text, m.dim, m.fusion)
    return HEADS.get(m.head)(cfg, tower, n_items, n_users)  # model.head: its builder, listed in tcf.extensions


def build_sasrec(cfg, tower, n_items: int, n_users: int) -> SASRec:
    m = cfg.model
    return SASRec(tower, dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, dropout=m.dropout, max_len=m.max_len)


def build_dssm(cfg, tower, n_items: int, n_users: int) -> DSSM:
    m = cfg.model
    return DSSM(tower, n_users=n_users, dim=m.dim, user_tower=m.user_tower, mlp_layers=m.mlp_layers,
                dropout=m.dropout)


__all__ = ["DSSM", "SASRec", "build_dssm", "build_model", "build_sasrec"]
