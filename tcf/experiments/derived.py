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
            old = _read(path)
            same = json.dumps(old.get("value"), sort_keys=True) == json.dumps(json.loads(text)["value"], sort_keys=True)
            if old.get("key") == key and not same:  # the same inputs gave another value: the deriving code changed
                print(f"tcf report: {path}: computed anew from the same inputs, it differs from the value stored "
                      "there; replaced")
            atomic_write_text(path, text)
        return value
    if not path.is_file():
        return None
    stored = _read(path, loud=True)
    return stored.get("value") if stored.get("key") == key else None


def _read(path: Path, loud: bool = False) -> dict:
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return stored if isinstance(stored, dict) else {}
    except (OSError, json.JSONDecodeError) as e:
        if loud:
            print(f"tcf report: {path} is unreadable ({type(e).__name__}); not used")
        return {}
