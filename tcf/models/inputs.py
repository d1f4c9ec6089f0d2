"""What a run's item tower reads besides the dataset, decided in one place.

- ``id``: nothing.
- ``frozen`` / ``id+text`` (POOLED_TOWERS): pooled text vectors [N + 1, D] from the embedding cache.
- ``finetune`` / ``lora`` (LM_TOWERS): the token-state cache entry, hidden states entering layer L-k
  (:func:`tcf.models.lm_tower.token_cache`), which the tower's top k LM layers run on.

Each is extracted on first use, or, with ``cache_path``, that entry is checked against the data.
Training, the trained-run loader and the sweep's extraction step all come here, so they always
read the same cache for the same config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tcf.run.config import LM_TOWERS, POOLED_TOWERS


def text_input_kind(cfg) -> str | None:
    """"pooled" (frozen text towers), "tokens" (fine-tuned towers) or None (ID towers, zero-shot runs)."""
    if getattr(cfg, "task", "train") != "train":
        return None
    if cfg.model.tower in POOLED_TOWERS:
        return "pooled"
    return "tokens" if cfg.model.tower in LM_TOWERS else None


def text_inputs(cfg, dataset, *, progress: bool = True) -> tuple[np.ndarray | object | None, dict]:
    """The tower's text input and its ``text_cache`` info (cache folder, key hash, encoder parameters):
    pooled vectors [N + 1, D], the token-state cache entry, or (None, {}) for an ID tower."""
    kind = text_input_kind(cfg)
    if kind == "tokens":
        from tcf.models.lm_tower import token_cache

        return token_cache(cfg, dataset)
    if kind is None:
        return None, {}
    entry = pooled_entry(cfg, dataset, progress=progress)
    return np.asarray(entry.vectors, dtype=np.float32), {"cache": str(entry.path), "key_hash": entry.manifest["key_hash"],
                                                         "encoder_parameters": entry.manifest["n_parameters"]}


def pooled_entry(cfg, dataset, *, progress: bool = True):
    """The pooled-vector cache entry a frozen tower reads: ``cache_path`` checked against the dataset's
    item texts, or extracted (found) under ``cache_root``."""
    from tcf.encoders.cache import CacheError, read_entry
    from tcf.encoders.extract import extract

    if not cfg.cache_path:
        return extract(dataset, cfg.encoder, root=cfg.cache_root, template=cfg.data.template, progress=progress).entry
    entry = read_entry(Path(cfg.cache_path))
    template = cfg.data.template or dataset.template
    want = dataset.text_fingerprint(template)
    if entry.key.get("kind") != "pooled":
        raise CacheError(f"{entry.path}: a {entry.key.get('kind')} cache; the frozen tower needs pooled vectors")
    if entry.key["text_fingerprint"] != want or entry.manifest["rows"] != dataset.n_items + 1:
        raise CacheError(f"{entry.path}: made for other item texts (text_fingerprint "
                         f"{entry.key['text_fingerprint'][:12]}, {entry.manifest['rows']} rows) than "
                         f"{dataset.path} with template {template!r} ({want[:12]}, {dataset.n_items + 1} rows)")
    return entry
