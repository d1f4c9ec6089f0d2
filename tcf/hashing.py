"""Content hashes: of JSON-able data (keys, ids) and of files (cache shards, weights), one way each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def json_digest(data: Any, length: int | None = None) -> str:
    """sha256 hex of ``data`` as JSON with sorted keys (``str`` for what JSON cannot hold), cut to ``length``."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:length] if length else digest


def file_digest(path: str | Path, limit: int | None = None) -> str:
    """sha256 hex of a file's bytes (its first ``limit`` bytes when given), read in 1 MiB chunks."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left = None if left is None else left - len(chunk)
    return h.hexdigest()
