"""Redis unreachable or hanging: a quick 503 in the error shape, never a hang or a stack trace."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.embedded import free_port
from gateway.main import create_app
from tests.conftest import AUTH, make_settings


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("kind", ["refused", "hanging"])
def test_redis_unavailable_is_a_quick_503(kind: str, silent_server: int) -> None:
    port = free_port() if kind == "refused" else silent_server
    settings = make_settings(f"redis://127.0.0.1:{port}/0", "gwdown:")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for method, path in (("post", "/v1/jobs/echo"), ("get", "/readyz"), ("get", "/add/1/2")):
            started = time.monotonic()
            response = client.request(method, path, json={}, headers=AUTH)
            elapsed = time.monotonic() - started

            assert response.status_code == 503, response.text
            assert response.json()["code"] == "redis_unavailable"
            assert response.headers["Retry-After"] == "1"
            assert elapsed < 2.5
        assert client.get("/healthz").status_code == 200
