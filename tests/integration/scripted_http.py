"""A local HTTP server (http.server in a thread) that answers each POST with the next
scripted (status, headers, delay) and keeps what it was sent: the far end of every sink
that POSTs (Slack's incoming webhook, the generic webhook). Nothing leaves the machine."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Post:
    """One request answered 200: its raw body, its headers, when it was answered."""

    body: bytes
    headers: dict[str, str]
    at: float


class ScriptedHTTP:
    """Answers POSTs as scripted (then 200); `release` cleared makes it hang after reading."""

    def __init__(self, path: str, answers: dict[int, bytes] | None = None) -> None:
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.posts: list[Post] = []
        self.attempts: list[float] = []
        self.release = threading.Event()
        self.release.set()
        outer = self
        texts = answers or {}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts.append(time.monotonic())
                outer.release.wait(30)
                status, headers, delay = outer.script.pop(0) if outer.script else (200, {}, 0.0)
                time.sleep(delay)
                if status == 200:
                    outer.posts.append(Post(body, dict(self.headers.items()), time.monotonic()))
                text = texts.get(status, b"")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 15) -> None:
        """Until `n` requests were answered 200."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < n:
            assert time.monotonic() < deadline, f"got {len(self.posts)} of {n} requests"
            time.sleep(0.02)

    def stop(self) -> None:
        """Let hung requests go and shut the server down."""
        self.release.set()
        self.server.shutdown()
