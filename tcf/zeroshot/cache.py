"""SQLite response cache: one row per (backend, model and revision, full prompt, generation parameters).

Every reply is committed as soon as it arrives (WAL journal), so a killed run loses at
most the prompts in flight and a rerun asks the backend only for what is missing; a run
with a warm cache makes no backend call at all.  Sampled generations (temperature > 0)
are cached only when a generation seed makes them reproducible.  Failed requests are
never cached: a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY, backend TEXT, model TEXT, reply TEXT NOT NULL, prompt_tokens INTEGER,
    completion_tokens INTEGER, created REAL)"""


def cacheable(params: dict) -> bool:
    return float(params.get("temperature", 0.0)) == 0.0 or params.get("seed") is not None


def cache_key(backend: str, model: str, messages: list[dict], params: dict) -> str:
    blob = json.dumps({"backend": backend, "model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)
        self.db.commit()

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out = {}
        with self.lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self.db.execute(
                    f"SELECT key, reply, prompt_tokens, completion_tokens FROM replies WHERE key IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                out.update({k: {"text": r, "prompt_tokens": p, "completion_tokens": c} for k, r, p, c in rows})
        return out

    def put(self, key: str, backend: str, model: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key, backend, model, text, prompt_tokens, completion_tokens, time.time()))
            self.db.commit()

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()
