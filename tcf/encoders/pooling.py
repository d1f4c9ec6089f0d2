"""Pooling token states into one vector per text, and normalisation as a separate step.

Every mode is a pure function of ``(states [B, T, D], mask [B, T])`` and is correct
for left- and right-padded batches alike: positions are found from the mask, never
assumed from the padding side.
"""

from __future__ import annotations

import torch

from tcf import extensions

ITEM_TOKEN = "item_token"  # fine-tuned towers only: a learned token's final state (tcf.models.item_token)
POOLINGS = extensions.POOLINGS.choices()  # the modes' names live in tcf.extensions


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the states of real (mask = 1) tokens; accumulated in fp32."""
    m = mask.to(torch.float32).unsqueeze(-1)  # [B, T, 1]
    summed = (states.to(torch.float32) * m).sum(dim=1)  # [B, D]
    return summed / m.sum(dim=1).clamp_min(1.0)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding."""
    t = mask.shape[1]
    return (t - 1) - torch.flip(mask.to(torch.int64), dims=[1]).argmax(dim=1)


def first_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token of each row (the CLS position under left padding too)."""
    return mask.to(torch.int64).argmax(dim=1)


def gather_rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return states[torch.arange(states.shape[0], device=states.device), index].to(torch.float32)


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, T, D] states and [B, T] mask -> [B, D] fp32 vectors."""
    if mode == "mean":
        return mean_pool(states, mask)
    if mode == "last":
        return gather_rows(states, last_index(mask))
    if mode == "cls":
        return gather_rows(states, first_index(mask))
    if mode == ITEM_TOKEN:
        from tcf.errors import ConfigError

        raise ConfigError("pooling item_token is a learned token run through fine-tuned layers (model.tower "
                          "finetune / lora); an encoder's states cannot be pooled with it")
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLINGS}")


def l2_normalize(vectors, eps: float = 1e-12):
    """Rows scaled to unit length (torch tensors or numpy arrays); zero rows stay zero."""
    if isinstance(vectors, torch.Tensor):
        return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(eps)
    import numpy as np

    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)
