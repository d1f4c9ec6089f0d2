"""A real HTTP server on 127.0.0.1 that replays scripted replies and faults (OpenAI-compatible routes)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def text_vector(text: str, dim: int = 8) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim).round(6).tolist()


class FakeServer:
    """``script`` is consumed one entry per request: "ok", 500, 429, "malformed", ("sleep", s), or a dict reply.

    When the script is empty every request gets "ok".  Requests are recorded in ``requests``.
    """

    def __init__(self, script=(), dim: int = 8, chat=None, port: int = 0):
        self.script = list(script)
        self.dim = dim
        self.chat = chat  # callable(messages) -> reply text, for /chat/completions
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                    action = server.script.pop(0) if server.script else "ok"
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if action in (500, 503, 429, 400):
                    self.send_response(action)
                    if action == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted"}')
                    return
                if action == "malformed":
                    payload = b'{"data": [ {"index": 0, "embedd'
                elif isinstance(action, dict):
                    payload = json.dumps(action).encode()
                elif self.path.endswith("/embeddings"):
                    inputs = body["input"]
                    payload = json.dumps({"data": [{"index": i, "embedding": text_vector(t, server.dim)}
                                                   for i, t in enumerate(inputs)][::-1],
                                          "usage": {"prompt_tokens": sum(len(t.split()) for t in inputs)}}).encode()
                else:
                    text = server.chat(body["messages"]) if server.chat else "1, 2, 3"
                    payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                       "finish_reason": "stop"}],
                                          "usage": {"prompt_tokens": 10, "completion_tokens": 3}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
