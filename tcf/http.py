"""JSON over HTTP for OpenAI-compatible servers, with bounded retries and backoff.

Retried: connection errors, timeouts, HTTP 429 and 5xx, and replies that are not
the JSON asked for.  Not retried: other 4xx (a bad request stays bad).  The key comes
from an environment variable named by the caller, never from a file or a config.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from tcf.errors import TcfError

log = logging.getLogger(__name__)


class ServerError(TcfError):
    """The server could not give a usable reply within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 0.5  # first wait; doubles each retry (with jitter), capped
    max_backoff_s: float = 16.0
    timeout_s: float = 60.0


def api_key(env_var: str | None) -> str | None:
    """The key from ``env_var`` (None when unset: local servers need none)."""
    return os.environ.get(env_var) if env_var else None


def _wait(policy: RetryPolicy, attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), policy.max_backoff_s)
        except ValueError:
            pass
    base = min(policy.backoff_s * 2**attempt, policy.max_backoff_s)
    return base * (0.5 + random.random() / 2)


def post_json(url: str, payload: dict, *, key: str | None, policy: RetryPolicy, stats: dict | None = None) -> dict:
    """POST ``payload``; return the decoded JSON object, retrying transient failures."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    last = "no attempt made"
    for attempt in range(policy.max_retries + 1):
        retry_after = None
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=policy.timeout_s) as resp:
                raw = resp.read()
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                return data
            except ValueError as e:
                last = f"malformed JSON reply ({e}): {raw[:120]!r}"
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code != 429 and e.code < 500:
                raise ServerError(f"{url}: HTTP {e.code}: {detail}") from None
            last, retry_after = f"HTTP {e.code}: {detail}", e.headers.get("Retry-After")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if attempt < policy.max_retries:
            if stats is not None:
                stats["retries"] = stats.get("retries", 0) + 1
            wait = _wait(policy, attempt, retry_after)
            log.warning("%s: %s; retry %d/%d in %.1fs", url, last, attempt + 1, policy.max_retries, wait)
            time.sleep(wait)
    raise ServerError(f"{url}: no usable reply after {policy.max_retries + 1} attempts; last: {last}")
