"""Celery's task lifecycle through the loop pool (tasks/pool.py), checked as for the stock pools.

Each check runs the same worker command with `--pool loop` and with the stock pools that make the
same promise: a finished task is acked; a revoked task that is still queued never runs and is
acked; a task whose process dies is not acked and runs again (acks_late, reject_on_worker_lost);
a task past its hard time limit fails and is acked. Celery's threads pool enforces no time limits,
so that check runs on loop and prefork only.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from gateway.embedded import EmbeddedRedis
from gateway.main import create_app
from tasks import protocol
from tasks.queues import DEFAULT, LLM
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.test_dev_command import descendants
from tests.handlers.llm_stub import LlmStub

pytestmark = pytest.mark.e2e

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
POOLS = ["loop", "threads", "prefork"]


@dataclass
class Stack:
    url: str
    prefix: str
    r: redis.Redis
    procs: Processes
    api: TestClient

    def worker(self, pool: str, concurrency: int = 2, **env: str):  # type: ignore[no-untyped-def]
        """A worker on `default` and `llm` with ``pool``, ready to take messages."""
        settings = {
            "VISIBILITY_TIMEOUT_SECONDS": "6",
            "DEFAULT_TASK_TIME_LIMIT_SECONDS": "5",
            "FILES_TASK_TIME_LIMIT_SECONDS": "5",
        }
        settings.update(env)
        before = len(self.procs.children)
        proc = self.procs.start(
            ["worker", DEFAULT, LLM, "--pool", pool, "--concurrency", str(concurrency)],
            process_env(self.url, self.prefix, **settings),
        )
        log = self.procs.children[before][1]
        wait_for(lambda: " ready." in log.read_text(errors="replace"), timeout=40)
        return proc

    def add(self, a: int, b: int) -> str:
        """Queue the example's task as the API writes it; returns its id."""
        ident = str(uuid.uuid4())
        self.r.lpush(
            DEFAULT, protocol.task_message("tasks.add", ident, DEFAULT, [a, b], ignore_result=False)
        )
        return ident

    def meta(self, ident: str) -> dict[str, object] | None:
        """The task's Celery result record, if written."""
        raw = self.r.get(f"celery-task-meta-{ident}")
        return json.loads(raw) if raw else None

    def llm_job(self) -> str:
        response = self.api.post(
            "/v1/jobs/llm",
            json={"model": "stub", "messages": [{"role": "user", "content": "hi"}]},
            headers=AUTH,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[bytes, bytes]:
        return self.r.hgetall(f"{self.prefix}job:{job_id}")  # type: ignore[no-any-return]

    def nothing_left(self) -> bool:
        """No message queued and none taken but unacked."""
        queued = self.r.llen(DEFAULT) + self.r.llen(LLM)
        return queued == 0 and self.r.hlen(UNACKED) == 0 and self.r.zcard(UNACKED_INDEX) == 0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis().start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def stack(server: EmbeddedRedis, tmp_path: Path) -> Iterator[Stack]:
    url = f"redis://127.0.0.1:{server.port}/3"
    r = redis.Redis.from_url(url)
    r.flushdb()
    prefix = f"life-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    with TestClient(create_app(make_settings(url, prefix))) as api:
        try:
            yield Stack(url, prefix, r, procs, api)
        finally:
            procs.stop()
            r.close()
            print(procs.logs())  # shown by pytest when the test failed


@pytest.mark.parametrize("pool", POOLS)
def test_a_finished_task_is_acked(stack: Stack, pool: str) -> None:
    stack.worker(pool)
    ids = [stack.add(i, 1) for i in range(6)]
    wait_for(lambda: all(stack.meta(i) for i in ids), timeout=30)
    assert [stack.meta(i)["result"] for i in ids] == [i + 1 for i in range(6)]  # type: ignore[index]
    wait_for(stack.nothing_left, timeout=10)


@pytest.mark.parametrize("pool", POOLS)
def test_a_revoked_queued_task_never_runs_and_is_acked(stack: Stack, pool: str) -> None:
    stack.worker(pool)
    # an app of its own: broadcasts leave through the app's producer pool, on its own broker URL
    control = Celery("lifecycle-control", broker=stack.url).control
    # the worker listens for broadcasts once it answers one
    wait_for(lambda: control.ping(timeout=2), timeout=30)
    revoked = str(uuid.uuid4())
    # waited for: a revoke the worker has not yet taken in would race the message pushed next
    assert control.revoke(revoked, reply=True, timeout=10), "no worker confirmed the revoke"
    stack.r.lpush(
        DEFAULT, protocol.task_message("tasks.add", revoked, DEFAULT, [1, 1], ignore_result=False)
    )
    after = stack.add(2, 2)
    wait_for(lambda: stack.meta(after), timeout=30)
    wait_for(lambda: stack.meta(revoked), timeout=10)
    assert stack.meta(revoked)["status"] == "REVOKED"  # type: ignore[index]
    wait_for(stack.nothing_left, timeout=10)


@pytest.mark.parametrize("pool", POOLS)
def test_a_task_whose_process_dies_is_not_acked_and_runs_again(stack: Stack, pool: str) -> None:
    # the stub answers nobody before two calls have arrived: the first run hangs until the
    # message has come back and run a second time
    with LlmStub(delay=0, hold_until=2) as stub:
        env = {"LLM_BASE_URL": stub.base_url}
        worker = stack.worker(pool, concurrency=1, **env)
        job_id = stack.llm_job()
        wait_for(lambda: stub.app.requests == 1, timeout=30)
        if pool == "prefork":
            # the pool process running the task dies; the worker stays
            [child] = descendants(worker.pid)
            signal_target = child
        else:
            # the task runs in the worker process itself
            signal_target = worker.pid
        os.kill(signal_target, signal.SIGKILL)
        if pool != "prefork":
            worker.wait(10)
            assert stack.r.hlen(UNACKED) == 1  # not acked: kept for the visibility timeout
            stack.worker(pool, concurrency=1, **env)
        wait_for(lambda: stack.job(job_id).get(b"status") == b"succeeded", timeout=60)
        assert stack.job(job_id)[b"attempts"] == b"2"
        assert stub.app.requests == 2
        wait_for(stack.nothing_left, timeout=15)


@pytest.mark.parametrize("pool", ["loop", "prefork"])
def test_a_task_past_its_hard_time_limit_fails_and_is_acked(stack: Stack, pool: str) -> None:
    with LlmStub(delay=120) as stub:
        stack.worker(
            pool,
            LLM_BASE_URL=stub.base_url,
            DEFAULT_TASK_TIME_LIMIT_SECONDS="2",
            FILES_TASK_TIME_LIMIT_SECONDS="2",
            VISIBILITY_TIMEOUT_SECONDS="60",
        )
        job_id = stack.llm_job()
        wait_for(lambda: stub.app.requests == 1, timeout=30)
        # gone from the queue and from the unacked set long before the call would answer
        wait_for(stack.nothing_left, timeout=20)
        after = stack.add(3, 4)
        wait_for(lambda: stack.meta(after), timeout=30)  # the slot was freed
        assert stub.app.requests == 1  # not run again
        if pool == "loop":
            record = stack.job(job_id)
            assert record[b"status"] == b"failed"
            assert b"TimeLimitExceeded" in record[b"error"]
