"""Oversized webhooks against a real uvicorn server over a raw socket: refused without reading the
rest (the in-process TestClient reads a request body whole before the app sees it, so it cannot
show this)."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn

from gateway.embedded import free_port
from gateway.main import create_app
from tests.conftest import make_settings

SECRET = "whsec_" + base64.b64encode(b"limits-test-secret-0123456789ab").decode()
SOURCES = """
[sources.std]
scheme = "standard"
secrets_env = ["TESTHOOK_LIMITS_SECRET"]
"""
LIMIT = 1024 * 1024


@pytest.fixture
def server(
    quiet_redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[int]:
    """The app served by uvicorn in a thread on a free loopback port."""
    monkeypatch.setenv("TESTHOOK_LIMITS_SECRET", SECRET)
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    redis.Redis.from_url(quiet_redis_url).flushdb()
    app = create_app(make_settings(quiet_redis_url, prefix, webhook_sources_file=path))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def head(port: int, extra: str) -> bytes:
    return (
        f"POST /v1/webhooks/std HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nwebhook-id: msg_1\r\n"
        f"webhook-timestamp: {int(time.time())}\r\nwebhook-signature: v1,AAAA\r\n{extra}\r\n"
    ).encode()


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_huge_content_length_is_refused_at_once(server: int) -> None:
    """Content-Length says 1 GiB and only 10 bytes follow: 413 comes back without waiting."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head(server, f"Content-Length: {1024**3}\r\n") + b'{"type":"x')
        status = read_status(sock)
        elapsed = time.monotonic() - started
    assert status == 413
    assert elapsed < 1.0


def test_a_chunked_body_is_refused_once_the_limit_is_passed(
    server: int, quiet_redis: redis.Redis
) -> None:
    """No Content-Length: the server counts as it streams and answers 413 just past the limit,
    while the sender still has most of its (endless) body to go."""
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    status = None
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(head(server, "Transfer-Encoding: chunked\r\n"))
        sock.settimeout(0.05)
        while sent < 64 * LIMIT:  # the sender would go on to 64 MiB
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            try:
                status = read_status(sock)
                break
            except TimeoutError:
                continue
        if status is None:
            sock.settimeout(5)
            status = read_status(sock)
    assert status == 413
    assert sent < 3 * LIMIT  # the limit plus what sat in socket buffers, not the whole body
    assert quiet_redis.llen("webhooks") == 0
