"""A SIGKILLed worker's jobs run again on another worker within seconds, with default settings,
while a healthy worker's long task is never handed to a second worker (tasks/liveness.py).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.embedded import EmbeddedRedis
from gateway.main import create_app
from tests.conftest import Processes, make_settings, process_env, wait_for
from tests.e2e.test_loop_pool import all_final, jobs, nothing_unacked, submit_llm_jobs
from tests.e2e.test_redis_restart import submit_echo_jobs
from tests.handlers.llm_stub import LlmStub

pytestmark = pytest.mark.e2e

# The bound is 60 s with default settings (liveness TTL 10 s, reaper every 3 s).
RECOVERY_DEADLINE = 60


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    server = EmbeddedRedis().start()
    r = redis.Redis.from_url(server.url)
    prefix = f"crash-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    try:
        with TestClient(create_app(make_settings(server.url, prefix))) as api:
            yield {"url": server.url, "prefix": prefix, "r": r, "procs": procs, "api": api}
    finally:
        procs.stop()
        r.close()
        server.stop()


def taken_records(r: redis.Redis) -> int:
    """Messages recorded under some consumer (tasks/liveness.py's taken hashes)."""
    return sum(r.hlen(key) for key in r.scan_iter("unacked:taken:*"))


def test_a_killed_loop_worker_s_jobs_run_again_within_seconds_and_a_live_long_task_never(
    stack: dict[str, Any],
) -> None:
    r, prefix, procs, api = stack["r"], stack["prefix"], stack["procs"], stack["api"]
    n = 25
    with (
        LlmStub(delay=40) as long_call,
        LlmStub(delay=600) as hanging,
        LlmStub(delay=0) as answering,
    ):
        # a healthy worker holding one call that lasts longer than many reaper passes
        procs.start(
            ["worker", "llm", "--concurrency", "1"],
            process_env(stack["url"], prefix, LLM_BASE_URL=long_call.base_url),
        )
        [long_job] = submit_llm_jobs(api, 1)
        try:
            wait_for(lambda: long_call.app.requests == 1, timeout=30)
            doomed = procs.start(
                ["worker", "llm", "--concurrency", "40"],
                process_env(stack["url"], prefix, LLM_BASE_URL=hanging.base_url),
            )
            ids = submit_llm_jobs(api, n)
            wait_for(lambda: hanging.app.requests == n, timeout=30)
            assert taken_records(r) == n + 1  # each message is recorded under its consumer
            doomed.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            doomed.wait(10)
            procs.start(
                ["worker", "llm", "--concurrency", "40"],
                process_env(stack["url"], prefix, LLM_BASE_URL=answering.base_url),
            )
            wait_for(lambda: answering.app.requests == n, timeout=RECOVERY_DEADLINE + 30)
            recovered_in = time.monotonic() - killed_at
            print(f"\nloop worker SIGKILLed: its {n} jobs running again after {recovered_in:.1f} s")
            assert recovered_in < RECOVERY_DEADLINE
            wait_for(lambda: all_final(r, prefix, ids), timeout=30)
            records = jobs(r, prefix, ids)
            assert {rec[b"status"] for rec in records} == {b"succeeded"}
            assert {rec[b"attempts"] for rec in records} == {b"2"}  # run once more, not twice
            # the long call finishes where it started, never handed to the other workers
            wait_for(lambda: all_final(r, prefix, [long_job]), timeout=60)
            [record] = jobs(r, prefix, [long_job])
            assert (record[b"status"], record[b"attempts"]) == (b"succeeded", b"1")
            assert long_call.app.requests == 1 and answering.app.requests == n
            wait_for(lambda: nothing_unacked(r) and taken_records(r) == 0, timeout=15)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None


def test_a_killed_threads_worker_s_jobs_run_again_within_seconds(stack: dict[str, Any]) -> None:
    r, prefix, procs, api = stack["r"], stack["prefix"], stack["procs"], stack["api"]
    env = process_env(stack["url"], prefix)
    doomed = procs.start(["worker", "default", "--concurrency", "4"], env)
    ids = submit_echo_jobs(api, 4, sleep_ms=5000)
    try:
        wait_for(lambda: {j.get(b"status") for j in jobs(r, prefix, ids)} == {b"running"}, 30)
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.wait(10)
        procs.start(["worker", "default", "--concurrency", "4"], env)

        def running_again() -> bool:
            return all(j.get(b"attempts") == b"2" for j in jobs(r, prefix, ids))

        wait_for(running_again, timeout=RECOVERY_DEADLINE + 30, interval=0.2)
        recovered_in = time.monotonic() - killed_at
        print(f"\nthreads worker SIGKILLed: its 4 jobs running again after {recovered_in:.1f} s")
        assert recovered_in < RECOVERY_DEADLINE
        wait_for(lambda: all_final(r, prefix, ids), timeout=30)
        records = jobs(r, prefix, ids)
        assert {rec[b"status"] for rec in records} == {b"succeeded"}
        assert {rec[b"attempts"] for rec in records} == {b"2"}
        wait_for(lambda: nothing_unacked(r) and taken_records(r) == 0, timeout=15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None


def test_a_worker_of_two_queues_takes_from_both(stack: dict[str, Any]) -> None:
    # the wait watches one queue at a time (tasks/broker.py); every queue's jobs still run promptly
    r, prefix, procs, api = stack["r"], stack["prefix"], stack["procs"], stack["api"]
    with LlmStub(delay=0) as stub:
        env = process_env(stack["url"], prefix, LLM_BASE_URL=stub.base_url)
        procs.start(["worker", "llm", "default", "--pool", "threads", "--concurrency", "8"], env)
        try:
            for _ in range(3):  # one job at a time, so each is taken by an idle worker's wait
                ids = submit_echo_jobs(api, 1, sleep_ms=0) + submit_llm_jobs(api, 1)
                wait_for(lambda ids=ids: all_final(r, prefix, ids), timeout=30)
                assert {rec[b"status"] for rec in jobs(r, prefix, ids)} == {b"succeeded"}
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None
