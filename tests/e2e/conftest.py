"""The handler stack: real email, llm and files workers and an API process, pointed at test servers.

One SMTP server (aiosmtpd) and one OpenAI-compatible stub on loopback; the workers and the API share
a data directory, so a file uploaded through the API is what the `files` worker reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiosmtpd.controller import Controller

from gateway.embedded import free_port
from tasks.keys import Keys
from tests.conftest import AUTH, Processes, api_ready, process_env, wait_for
from tests.handlers.llm_stub import LlmStub
from tests.smtp_sink import Recorder

FINAL = ("succeeded", "failed", "dead")


@dataclass
class HandlerStack:
    """Where the API listens, its data directory, and how to drive and inspect jobs."""

    base_url: str
    data_dir: Path
    redis_url: str
    prefix: str
    smtp: Recorder
    procs: Processes

    def client(self) -> httpx.Client:
        """An HTTP client on the API with the test API key."""
        return httpx.Client(base_url=self.base_url, headers=AUTH, timeout=30)

    def submit(self, http: httpx.Client, kind: str, body: dict[str, Any]) -> str:
        """POST a job and return its id."""
        accepted = http.post(f"/v1/jobs/{kind}", json=body)
        assert accepted.status_code == 202, accepted.text
        return str(accepted.json()["id"])

    def wait_status(
        self, http: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll the job until its status is one of ``statuses``."""

        def reached() -> dict[str, Any] | None:
            view: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
            return view if view["status"] in statuses else None

        try:
            return wait_for(reached, timeout=timeout)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.procs.logs()}") from None

    def make_due_now(self, job_id: str) -> None:
        """Time travel: the job's waiting retry becomes due now instead of in ~30 s."""
        r = redis.Redis.from_url(self.redis_url)
        key = Keys(self.prefix).schedule
        entries = [m for m, _ in r.zscan_iter(key) if job_id.encode() in m]
        assert entries, "the job has no retry waiting in the schedule"
        r.zadd(key, dict.fromkeys(entries, 0), xx=True)
        r.close()


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[Recorder]:
    """A real SMTP server (aiosmtpd) on loopback."""
    sink = Recorder(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def llm_stub() -> Iterator[LlmStub]:
    """The OpenAI-compatible stub on loopback, answering at once."""
    with LlmStub(delay=0) as stub:
        yield stub


@pytest.fixture(scope="session")
def handler_stack(
    worker_redis_url: str,
    prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    smtp_sink: Recorder,
    llm_stub: LlmStub,
    workers: Processes,  # the default-queue worker: it too drains the schedule
) -> Iterator[HandlerStack]:
    """An API process and one worker per handler queue, all on the test servers."""
    procs = Processes(tmp_path_factory.mktemp("handler-stack"))
    data_dir = tmp_path_factory.mktemp("data")
    env = process_env(
        worker_redis_url,
        prefix,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_sink.port),
        SMTP_TLS="none",
        LLM_BASE_URL=llm_stub.base_url,
        LLM_DEFAULT_MODEL="stub-model",
        DATA_DIR=str(data_dir),
        MAX_UPLOAD_BYTES=str(512 * 1024 * 1024),
    )
    procs.start(["worker", "email", "--concurrency", "8"], env)
    procs.start(["worker", "llm", "--concurrency", "8"], env)
    procs.start(["worker", "files", "--concurrency", "2"], env)
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield HandlerStack(base, data_dir, worker_redis_url, prefix, smtp_sink, procs)
    finally:
        procs.stop()
