"""What the report derives from files a run folder does not keep: stored beside the run so that the report
regenerates from the committed records alone.

Two parts of a report read more than ``results.json``: trained models re-scored on a zero-shot run's
candidate lists (they need the trained run's checkpoint and the candidate file) and nearest items by encoder
(they need the embedding cache).  Neither is published with the results (checkpoints and caches are large),
so whenever the report computes one it writes it to ``RUN/derived/NAME.json`` with the key of its inputs,
and where the inputs are gone it reads that file back, when the key matches.  A published study's report is
then a function of its committed files (``tcf report`` on a fresh clone rebuilds it byte for byte).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcf.fsutil import atomic_write_text

FOLDER = "derived"


def path_of(run_folder: str | Path, name: str) -> Path:
    return Path(run_folder) / FOLDER / f"{name}.json"


def stored(run_folder: str | Path, name: str, key: dict) -> Any | None:
    """The value stored under ``name`` for this ``key``, or None (none stored, another key, unreadable)."""
    return derived(run_folder, name, key, None)


def derived(run_folder: str | Path, name: str, key: dict, compute: Callable[[], Any] | None,
            compact: bool = False) -> Any | None:
    """``compute()`` when given (its inputs are here), stored under the run with ``key`` (on one line when
    ``compact``: long per-user lists); otherwise the value stored for the same ``key``, or None.  A stored file
    is rewritten only when its content changes."""
    path = path_of(run_folder, name)
    if compute is not None:
        value = compute()
        text = json.dumps({"key": key, "value": value}, indent=None if compact else 1,
                          separators=(",", ":") if compact else None, sort_keys=True, allow_nan=True) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        return value
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        print(f"tcf report: {path} is unreadable ({type(e).__name__}); not used")
        return None
    return stored.get("value") if stored.get("key") == key else None
