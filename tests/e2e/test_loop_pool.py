"""The loop pool (tasks/pool.py) and the batching transport (tasks/broker.py) in real workers.

One `llm` worker process holds every call in flight at once; every accepted job runs once and
nothing is left unacked in Redis; a warm shutdown finishes the calls it holds and ends its SMTP
sessions with QUIT; and the messages a killed worker had taken in a batch come back after the
visibility timeout and run; a job whose final write Redis refused is run again, not lost.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

from gateway.embedded import EmbeddedRedis, free_port
from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.handlers.llm_stub import LlmStub
from tests.smtp_sink import Recorder

pytestmark = pytest.mark.e2e

# kombu's bookkeeping of messages taken but not yet acked (tasks/broker.py keeps its format)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


@pytest.fixture
def stack(redis_server: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    url = f"{redis_server}/8"
    r = redis.Redis.from_url(url)
    r.flushdb()
    prefix = f"pool-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    with TestClient(create_app(make_settings(url, prefix))) as api:
        try:
            yield {"url": url, "prefix": prefix, "r": r, "procs": procs, "api": api}
        finally:
            procs.stop()
            r.close()


def submit_llm_jobs(api: TestClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        response = api.post(
            "/v1/jobs/llm",
            json={"model": "stub", "messages": [{"role": "user", "content": f"job {i}"}]},
            headers=AUTH,
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def jobs(r: redis.Redis, prefix: str, ids: list[str]) -> list[dict[bytes, bytes]]:
    return [r.hgetall(f"{prefix}job:{job_id}") for job_id in ids]


def all_final(r: redis.Redis, prefix: str, ids: list[str]) -> bool:
    return all(j.get(b"status") in (b"succeeded", b"failed", b"dead") for j in jobs(r, prefix, ids))


def nothing_unacked(r: redis.Redis) -> bool:
    return r.hlen(UNACKED) == 0 and r.zcard(UNACKED_INDEX) == 0


def test_one_worker_holds_every_call_in_flight_and_leaves_nothing_unacked(
    stack: dict[str, Any],
) -> None:
    n = 120
    r, prefix, procs = stack["r"], stack["prefix"], stack["procs"]
    # the stub answers nobody until all n calls have arrived: only a worker holding all of them
    # in flight at once gets its jobs done
    with LlmStub(delay=0, hold_until=n) as stub:
        env = process_env(stack["url"], prefix, LLM_BASE_URL=stub.base_url)
        procs.start(["worker", "llm", "--concurrency", str(n)], env)
        ids = submit_llm_jobs(stack["api"], n)
        try:
            wait_for(lambda: all_final(r, prefix, ids), timeout=60)
            records = jobs(r, prefix, ids)
            assert {rec[b"status"] for rec in records} == {b"succeeded"}
            assert {rec[b"attempts"] for rec in records} == {b"1"}
            assert stub.app.requests == n  # one call per job, none repeated
            wait_for(lambda: nothing_unacked(r), timeout=10)
            assert r.llen("llm") == 0
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None


def test_warm_shutdown_finishes_the_calls_in_flight_before_exiting(stack: dict[str, Any]) -> None:
    n = 30
    r, prefix, procs = stack["r"], stack["prefix"], stack["procs"]
    with LlmStub(delay=1.5) as stub:
        env = process_env(stack["url"], prefix, LLM_BASE_URL=stub.base_url)
        worker = procs.start(["worker", "llm", "--concurrency", "50"], env)
        ids = submit_llm_jobs(stack["api"], n)
        try:
            wait_for(lambda: stub.app.requests == n, timeout=30)  # every call is in flight
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
            records = jobs(r, prefix, ids)
            assert {rec[b"status"] for rec in records} == {b"succeeded"}
            assert {rec[b"attempts"] for rec in records} == {b"1"}
            # nothing handed back to the queue, nothing left to come back after the timeout
            assert r.llen("llm") == 0
            assert nothing_unacked(r)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None


def test_the_batch_a_killed_worker_held_runs_after_the_visibility_timeout(
    stack: dict[str, Any],
) -> None:
    n = 25
    r, prefix, procs = stack["r"], stack["prefix"], stack["procs"]
    # Short, but long enough that no live worker's held job comes back while it still runs, on a
    # loaded machine: at a 2 s time limit the reaper's overdue pass (limit + grace) gave back the
    # first worker's whole batch before the kill, so every job ran three times (1 CI run in 5),
    # and at a 3 s visibility timeout kombu did the same to single jobs. The time limits must stay
    # below the visibility timeout (settings refuse otherwise).
    short = {
        "VISIBILITY_TIMEOUT_SECONDS": "15",
        "DEFAULT_TASK_TIME_LIMIT_SECONDS": "12",
        "FILES_TASK_TIME_LIMIT_SECONDS": "12",
    }
    with LlmStub(delay=60) as hanging, LlmStub(delay=0) as answering:
        first = procs.start(
            ["worker", "llm", "--concurrency", "40"],
            process_env(stack["url"], prefix, LLM_BASE_URL=hanging.base_url, **short),
        )
        ids = submit_llm_jobs(stack["api"], n)
        try:
            # all n taken by the first worker (one by BRPOP, the rest by the batch script)
            wait_for(lambda: hanging.app.requests == n, timeout=30)
            assert r.hlen(UNACKED) == n and r.llen("llm") == 0
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            procs.start(
                ["worker", "llm", "--concurrency", "40"],
                process_env(stack["url"], prefix, LLM_BASE_URL=answering.base_url, **short),
            )
            wait_for(lambda: all_final(r, prefix, ids), timeout=60)
            records = jobs(r, prefix, ids)
            assert {rec[b"status"] for rec in records} == {b"succeeded"}
            assert {rec[b"attempts"] for rec in records} == {b"2"}  # restored, run once more
            assert answering.app.requests == n
            wait_for(lambda: nothing_unacked(r), timeout=10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None


def test_a_stopping_email_worker_ends_its_smtp_sessions_with_quit(stack: dict[str, Any]) -> None:
    r, prefix, procs = stack["r"], stack["prefix"], stack["procs"]
    sink = Recorder(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        env = process_env(
            stack["url"], prefix, SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink.port), SMTP_TLS="none"
        )
        worker = procs.start(["worker", "email", "--concurrency", "8"], env)
        ids = []
        for i in range(12):
            response = stack["api"].post(
                "/v1/jobs/email",
                json={"to": f"r{i}@example.com", "subject": f"n{i}", "text": "hello"},
                headers=AUTH,
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        try:
            wait_for(lambda: all_final(r, prefix, ids), timeout=30)
            assert {rec[b"status"] for rec in jobs(r, prefix, ids)} == {b"succeeded"}
            assert len(sink.received) == 12
            # sessions are kept open between messages (fewer sessions than messages) ...
            assert 1 <= sink.connections <= 8 and sink.quits == 0
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
            # ... and each is ended politely when the worker stops
            assert sink.quits == sink.connections
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        controller.stop()


def test_a_job_whose_final_write_fails_is_run_again_once_redis_takes_writes(
    tmp_path: Path,
) -> None:
    # A Redis of its own, made full for a while: with noeviction it then refuses every write that
    # would grow it (OOM), as a production Redis at maxmemory does, while reads and deletes (and
    # so acks) still work.
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    r = redis.Redis.from_url(server.url)
    prefix = f"down-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    short = {
        "VISIBILITY_TIMEOUT_SECONDS": "3",
        "DEFAULT_TASK_TIME_LIMIT_SECONDS": "2",
        "FILES_TASK_TIME_LIMIT_SECONDS": "2",
    }
    try:
        with (
            LlmStub(delay=1.5) as stub,
            TestClient(create_app(make_settings(server.url, prefix))) as api,
        ):
            env = process_env(server.url, prefix, LLM_BASE_URL=stub.base_url, **short)
            procs.start(["worker", "llm", "--concurrency", "4"], env)
            [job_id] = submit_llm_jobs(api, 1)
            try:
                wait_for(lambda: stub.app.requests == 1, timeout=30)  # the call is in flight
                r.config_set("maxmemory", 1)  # full: growing writes refused from now on
                # the whole log: kombu's tracebacks after the line can push it out of the usual tail
                wait_for(lambda: "Redis failed mid-task" in procs.logs(tail=None), timeout=15)
                assert jobs(r, prefix, [job_id])[0][b"status"] == b"running"
                r.config_set("maxmemory", 0)  # room again
                wait_for(lambda: all_final(r, prefix, [job_id]), timeout=60)
                [record] = jobs(r, prefix, [job_id])
                assert record[b"status"] == b"succeeded"
                assert record[b"attempts"] == b"2"  # the message came back and ran again
                assert stub.app.requests == 2
                wait_for(lambda: nothing_unacked(r), timeout=15)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        r.close()
        server.stop()
