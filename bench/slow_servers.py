"""Lean slow servers for the in-flight benchmark: every answer comes after DELAY seconds.

bench_inflight measures one worker process on a 2-core machine that also runs the server it calls,
so the server should cost as little CPU as it can. These are bare asyncio protocols, no framework;
each counts the calls it holds (in flight now, at peak, in all).

  http  POST anything -> 200 with a valid chat completion (an OpenAI-compatible LLM, and a
        callback receiver: any 2xx is a delivery); GET /stats -> {"inflight", "peak", "requests"}.
        HTTP/1.1 keep-alive, Content-Length bodies.
  smtp  an SMTP relay that takes every message and answers the end of DATA after the delay;
        its counters are served as GET /stats on STATS_PORT.

Run: python bench/slow_servers.py http PORT DELAY
     python bench/slow_servers.py smtp PORT DELAY STATS_PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
).encode()


class Stats:
    """Calls held now, at peak, and in all."""

    def __init__(self) -> None:
        self.inflight = 0
        self.peak = 0
        self.requests = 0

    def begin(self) -> None:
        self.requests += 1
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)

    def end(self) -> None:
        self.inflight -= 1

    def json(self) -> bytes:
        return json.dumps(
            {"inflight": self.inflight, "peak": self.peak, "requests": self.requests}
        ).encode()


def http_response(body: bytes) -> bytes:
    """A 200 with a JSON body; the connection stays open."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class HttpProtocol(asyncio.Protocol):
    """Requests on one connection are answered in order, each after the delay."""

    def __init__(self, stats: Stats, delay: float) -> None:
        self.stats, self.delay = stats, delay
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith("GET /stats"):
                self.transport.write(http_response(self.stats.json()))
                continue
            self.stats.begin()
            asyncio.get_running_loop().call_later(self.delay, self.answer)

    def answer(self) -> None:
        self.stats.end()
        if not self.transport.is_closing():
            self.transport.write(http_response(COMPLETION))


class SmtpProtocol(asyncio.Protocol):
    """Just enough SMTP for aiosmtplib: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def __init__(self, stats: Stats, delay: float) -> None:
        self.stats, self.delay = stats, delay
        self.buffer = b""
        self.in_data = False
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(b"220 bench ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                self.stats.begin()
                asyncio.get_running_loop().call_later(self.delay, self.accepted)
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250-bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 end with <CRLF>.<CRLF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                self.transport.write(b"250 OK\r\n")

    def accepted(self) -> None:
        self.stats.end()
        if not self.transport.is_closing():
            self.transport.write(b"250 OK queued\r\n")


async def serve(kind: str, port: int, delay: float, stats_port: int | None) -> None:
    """Serve until killed."""
    stats = Stats()
    loop = asyncio.get_running_loop()
    protocol = HttpProtocol if kind == "http" else SmtpProtocol
    servers = [
        await loop.create_server(lambda: protocol(stats, delay), "127.0.0.1", port, backlog=8192)
    ]
    if stats_port:
        servers.append(
            await loop.create_server(lambda: HttpProtocol(stats, 0), "127.0.0.1", stats_port)
        )
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    import uvloop

    kind, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    stats_port = int(sys.argv[4]) if len(sys.argv) > 4 else None
    uvloop.run(serve(kind, port, delay, stats_port))
