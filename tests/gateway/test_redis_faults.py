"""Redis answering but unable to serve (loading, read-only replica, out of memory, failing disk
saves, resetting connections): every route answers 503 with Retry-After, never 500. Our own bugs
(WRONGTYPE) stay 500.

Each error reply comes once from a tiny RESP server on loopback, to drive every route through the
error mapping, and then (all but LOADING) from a real redis-server put into that state.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
from fastapi.testclient import TestClient

from gateway.embedded import free_port, redis_binary
from gateway.main import create_app
from tests.conftest import AUTH, make_settings, wait_for

SECRET = "faults-inbound-secret"
SOURCES = """
[sources.plain]
scheme = "hmac"
secrets_env = ["TESTFAULTS_SECRET"]
header = "X-Plain-Signature"
"""
REPLIES = {
    "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
    "readonly": b"-READONLY You can't write against a read only replica.\r\n",
    "oom": b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
    "misconf": b"-MISCONF Redis is configured to save RDB snapshots, but it's currently unable"
    b" to persist to disk.\r\n",
    "masterdown": b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is no\r\n",
    "busy": b"-BUSY Redis is busy running a script.\r\n",
}
HOOK = b'{"type":"invoice.paid","id":"evt-1"}'
# every route that touches Redis, by the client that carries it (pipelined or redis.asyncio)
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/v1/jobs/echo", {"json": {"message": "hi"}, "headers": AUTH}),
    ("post", "/v1/jobs/echo", {"json": {"message": "hi"}, "headers": {**AUTH, "Idempotency-Key": "k"}}),  # noqa: E501
    ("get", "/v1/jobs/some-id", {"headers": AUTH}),
    ("get", "/v1/jobs/some-id/deliveries", {"headers": AUTH}),
    ("post", "/v1/webhooks/plain", {"content": HOOK, "headers": {
        "content-type": "application/json",
        "x-plain-signature": hmac.new(SECRET.encode(), HOOK, hashlib.sha256).hexdigest(),
    }}),
    ("get", "/v1/events/some-id", {"headers": AUTH}),
    ("get", "/v1/dead-letters", {"headers": AUTH}),
    ("post", "/v1/dead-letters/job:some-id/replay", {"headers": AUTH}),
    ("post", "/v1/dead-letters/replay", {"json": {"kind": "echo"}, "headers": AUTH}),
    ("get", "/add/1/2", {}),
    ("get", "/result/some-id", {}),
    ("get", "/readyz", {}),
]  # fmt: skip
# the routes that write whatever the data (a replay of nothing only reads, and answers 404 or 0)
WRITES = [r for r in REQUESTS if r[1].startswith(("/v1/jobs/echo", "/v1/webhooks", "/add"))]


class FakeRedis:
    """A RESP server answering every command with one error line (handshakes with +OK)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply  # None: reset every connection as soon as it is accepted
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.reply is None:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = hiredis.Reader()
        with conn:
            while data := conn.recv(65536):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    name = command[0].upper() if command else b""
                    ok = name in (b"CLIENT", b"SELECT", b"AUTH")
                    conn.sendall(b"+OK\r\n" if ok else self.reply or b"")

    def close(self) -> None:
        self.stopping = True
        self.listener.close()


def app_on(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("TESTFAULTS_SECRET", SECRET)
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCES)
    settings = make_settings(url, "gwfaults:", webhook_sources_file=sources)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def assert_all_503(client: TestClient, requests: list[tuple[str, str, dict[str, Any]]]) -> None:
    for method, path, kwargs in requests:
        started = time.monotonic()
        response = client.request(method, path, **kwargs)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, f"{method} {path}: {response.text}"
        assert response.json()["code"] == "redis_unavailable", path
        assert response.headers["Retry-After"] == "1", path
        assert elapsed < 2.5, f"{method} {path} took {elapsed:.1f}s"


@pytest.mark.parametrize("mode", [*REPLIES, "reset"])
def test_every_route_answers_503_to_a_redis_that_cannot_serve(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRedis(REPLIES.get(mode))
    try:
        with app_on(f"redis://127.0.0.1:{fake.port}/0", tmp_path, monkeypatch) as client:
            assert_all_503(client, REQUESTS)
    finally:
        fake.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[redis.Redis, str, Path]]:
    """A redis-server of this test's own, saving into a directory the test may take away."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
    proc = subprocess.Popen(
        [redis_binary(), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    admin = redis.Redis(port=port, socket_timeout=5)

    def up() -> bool:
        try:
            return bool(admin.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, timeout=10)
        yield admin, f"redis://127.0.0.1:{port}/0", data
    finally:
        admin.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("state", ["readonly", "oom", "misconf"])
def test_writes_to_a_real_redis_that_refuses_them_are_503(
    state: str,
    own_redis: tuple[redis.Redis, str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin, url, data = own_redis
    with app_on(url, tmp_path, monkeypatch) as client:
        assert client.post("/v1/jobs/echo", json={"message": "hi"}, headers=AUTH).status_code == 202
        if state == "readonly":  # a replica whose primary is gone
            admin.replicaof("127.0.0.1", free_port())
        elif state == "oom":
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
        else:  # the last background save failed: Redis refuses writes until one succeeds
            admin.config_set("stop-writes-on-bgsave-error", "yes")
            admin.config_set("save", "3600 1")  # the refusal applies only with saves configured
            data.rmdir()
            admin.bgsave()
            wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err")
        assert_all_503(client, WRITES)
        # reads still work where Redis serves them
        assert client.get("/v1/jobs/some-id", headers=AUTH).status_code == 404


def test_wrongtype_is_our_bug_and_stays_500(
    own_redis: tuple[redis.Redis, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, url, _ = own_redis
    with app_on(url, tmp_path, monkeypatch) as client:
        admin.set("gwfaults:job:broken", "not a hash")
        response = client.get("/v1/jobs/broken", headers=AUTH)
        assert (response.status_code, response.json()["code"]) == (500, "internal_error")
        # through the pipelined connection: the create script meets a hash where it GETs
        idem_keys = [k for k in admin.keys("gwfaults:*") if b"idem" in k]
        assert not idem_keys
        headers = {**AUTH, "Idempotency-Key": "wt"}
        first = client.post("/v1/jobs/echo", json={"message": "a"}, headers=headers)
        assert first.status_code == 202
        (key,) = [k for k in admin.keys("gwfaults:*") if b"wt" in k]
        admin.delete(key)
        admin.hset(key, "x", "y")
        response = client.post("/v1/jobs/echo", json={"message": "a"}, headers=headers)
        assert (response.status_code, response.json()["code"]) == (500, "internal_error")
