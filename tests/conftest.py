"""Shared fixtures: a real Redis (REDIS_URL, else an embedded redis-server) and real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.settings import Settings
from gateway.embedded import EmbeddedRedis, free_port
from gateway.main import create_app

API_KEY = "test-key-0123456789"  # an admin key too: tests read events and dead letters
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PLAIN_KEY = "test-plain-key-0123456789"  # submits and reads its own jobs only
PLAIN = {"Authorization": f"Bearer {PLAIN_KEY}"}
ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)


def api_ready(base: str) -> bool:
    """Whether the API at ``base`` answers /readyz with 200 (Redis reachable too)."""
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """Base URL (no db) of a real Redis: REDIS_URL when set, else an embedded one.

    Suites flush and count the databases they use, so two test processes (pytest-xdist) never
    share one Redis: only the first uses REDIS_URL, the others start their own.
    """
    given = os.environ.get("REDIS_URL")
    if given and os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        yield given.rsplit("/", 1)[0] if given.count("/") > 2 else given
        return
    server = EmbeddedRedis().start()
    try:
        yield f"redis://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def worker_redis_url(redis_server: str) -> str:
    """Database 14: where the session's real workers consume (tests there run end to end)."""
    return f"{redis_server}/14"


@pytest.fixture(scope="session")
def quiet_redis_url(redis_server: str) -> str:
    """Database 15: no worker consumes here, so queued messages can be inspected."""
    return f"{redis_server}/15"


@pytest.fixture(scope="session")
def prefix() -> str:
    """A key prefix of this test session's own."""
    return f"gwtest-{uuid.uuid4().hex[:8]}:"


def make_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    """Test settings: dev mode, an admin and a plain API key, the given Redis."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_key_prefix": prefix,
        "api_keys": [SecretStr(PLAIN_KEY)],
        "admin_api_keys": [SecretStr(API_KEY)],
        "environment": "dev",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def process_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a gateway child process talking to ``redis_url``."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        API_KEYS=PLAIN_KEY,
        ADMIN_API_KEYS=API_KEY,
        ENVIRONMENT="dev",
    )
    env.update(extra)
    return env


class Processes:
    """Child processes started by a test, all stopped at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.children: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``python -m gateway.cli <args>`` with its output in a log file."""
        log = self.tmp / f"proc-{len(self.children)}-{args[0]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((proc, log))
        return proc

    def logs(self, tail: int | None = 3000) -> str:
        """What the children printed: the last ``tail`` characters of each (for failure
        messages), or all of it with ``tail=None`` (for a test looking for a line)."""
        return "\n".join(
            f"== {log.name}\n{log.read_text(errors='replace')[-tail if tail else 0 :]}"
            for _, log in self.children
        )

    def stop(self) -> None:
        """Terminate (then kill) every child."""
        for proc, _ in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.children:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def workers(
    worker_redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    """Real Celery workers, one per queue the tests drive, for the whole session."""
    procs = Processes(tmp_path_factory.mktemp("workers"))
    env = process_env(worker_redis_url, prefix)
    procs.start(["worker", "default", "--concurrency", "4"], env)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture(scope="session")
def live_api(
    worker_redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API as a real uvicorn process (`gateway api`); yields its base URL."""
    procs = Processes(tmp_path_factory.mktemp("api"))
    port = free_port()
    procs.start(["api", "--port", str(port)], process_env(worker_redis_url, prefix))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield base
    finally:
        procs.stop()


@pytest.fixture
def client(quiet_redis_url: str, prefix: str) -> Iterator[TestClient]:
    """The app in-process against the quiet database (no workers: messages stay inspectable)."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    with TestClient(create_app(make_settings(quiet_redis_url, prefix))) as test_client:
        yield test_client


@pytest.fixture
def quiet_redis(quiet_redis_url: str) -> Iterator[redis.Redis]:
    """A client on the quiet database."""
    client = redis.Redis.from_url(quiet_redis_url)
    yield client
    client.close()


@pytest.fixture
def e2e_client(worker_redis_url: str, prefix: str, workers: Processes) -> Iterator[TestClient]:
    """The app in-process against the database the real workers consume."""
    with TestClient(create_app(make_settings(worker_redis_url, prefix))) as test_client:
        yield test_client
