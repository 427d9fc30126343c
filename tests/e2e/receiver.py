"""A real HTTP receiver on loopback for callback tests: each path behaves as a receiver might."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Behaviours by path:

    /ok             200
    /flaky?fail=N   500 for the first N requests on this path, then 200
    /hang           never answers within the client's timeout (holds the request ~5 s)
    /gone           410
    /busy           429 with Retry-After: 1 once, then 200
    """

    requests: list[Received] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        """Listen on 127.0.0.1 on a free port, in a thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                url = urlparse(self.path)
                with receiver.lock:
                    receiver.requests.append(
                        Received(url.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    seen = receiver.counts.get(self.path, 0)
                    receiver.counts[self.path] = seen + 1
                status, headers = receiver.answer(url.path, parse_qs(url.query), seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def answer(
        self, path: str, query: dict[str, list[str]], seen: int
    ) -> tuple[int, dict[str, str]]:
        """Status and headers for the ``seen``-th earlier request on this path."""
        if path == "/flaky":
            return (500 if seen < int(query.get("fail", ["1"])[0]) else 200), {}
        if path == "/hang":
            self.release.wait(5)
            return 200, {}
        if path == "/gone":
            return 410, {}
        if path == "/busy":
            return (429, {"Retry-After": "1"}) if seen == 0 else (200, {})
        return 200, {}

    @property
    def url(self) -> str:
        """Base URL."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def on(self, path: str) -> list[Received]:
        """Requests received on ``path``."""
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def stop(self) -> None:
        """Stop listening; hanging requests are released."""
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
