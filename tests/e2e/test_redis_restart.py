"""Workers ride through Redis faults: they stay up, reconnect by themselves and lose no job.

A Redis of the test's own (AOF, appendfsync everysec) is stopped while a threads worker
(`default`) and a loop worker (`llm`) hold jobs in flight, and started again on the same data;
or it refuses writes for a while (READONLY as a replica, OOM when full).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.embedded import EmbeddedRedis
from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.test_loop_pool import all_final, jobs, nothing_unacked, submit_llm_jobs
from tests.handlers.llm_stub import LlmStub

pytestmark = pytest.mark.e2e


def submit_echo_jobs(api: TestClient, n: int, sleep_ms: int) -> list[str]:
    ids = []
    for i in range(n):
        response = api.post(
            "/v1/jobs/echo", json={"message": f"m{i}", "sleep_ms": sleep_ms}, headers=AUTH
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


@pytest.mark.timeout(300)  # past every wait below, so a failure shows the workers' logs
def test_workers_outlive_a_redis_restart_and_finish_every_job(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    server = EmbeddedRedis(data_dir=data).start()
    r = redis.Redis.from_url(server.url, socket_timeout=5)
    prefix = f"restart-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    try:
        with LlmStub(delay=0.2) as stub:
            env = process_env(server.url, prefix, LLM_BASE_URL=stub.base_url)
            threads = procs.start(["worker", "default", "--concurrency", "4"], env)
            loop = procs.start(["worker", "llm", "--concurrency", "20"], env)
            with TestClient(create_app(make_settings(server.url, prefix))) as api:
                echo_ids = submit_echo_jobs(api, 300, sleep_ms=20)
                llm_ids = submit_llm_jobs(api, 300)
            ids = echo_ids + llm_ids
            try:
                # both workers hold jobs in flight, then Redis goes away for a few seconds
                wait_for(lambda: stub.app.requests >= 10, timeout=30)
                wait_for(lambda: r.hlen("unacked") >= 10, timeout=30)
                server.stop()
                time.sleep(3)  # Redis down: the outage itself, not a wait for work
                server = EmbeddedRedis(data_dir=data, port=server.port).start()
                r = redis.Redis.from_url(server.url, socket_timeout=5)
                wait_for(lambda: all_final(r, prefix, ids), timeout=120, interval=0.5)
                assert {rec[b"status"] for rec in jobs(r, prefix, ids)} == {b"succeeded"}
                assert threads.poll() is None and loop.poll() is None, "a worker exited"
                wait_for(lambda: nothing_unacked(r), timeout=30)
                assert r.llen("default") == 0 and r.llen("llm") == 0
                assert "Unrecoverable error" not in procs.logs()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        r.close()
        server.stop()


def make_replica(r: redis.Redis, port: int) -> None:
    """READONLY: a replica of a master that does not exist keeps its data, refuses writes."""
    r.replicaof("127.0.0.1", str(port + 1))


def make_full(r: redis.Redis, port: int) -> None:
    """OOM: with noeviction and maxmemory 1 every write that would grow the data is refused."""
    r.config_set("maxmemory", 1)


def heal(r: redis.Redis) -> None:
    r.replicaof("NO", "ONE")
    r.config_set("maxmemory", 0)


@pytest.mark.timeout(300)  # past every wait below, so a failure shows the workers' logs
@pytest.mark.parametrize("fault", [make_replica, make_full], ids=["readonly", "oom"])
def test_workers_ride_through_redis_refusing_writes(
    tmp_path: Path, fault: Callable[[redis.Redis, int], None]
) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    r = redis.Redis.from_url(server.url, socket_timeout=5)
    prefix = f"refuse-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    try:
        with LlmStub(delay=0.2) as stub:
            env = process_env(server.url, prefix, LLM_BASE_URL=stub.base_url)
            threads = procs.start(["worker", "default", "--concurrency", "4"], env)
            loop = procs.start(["worker", "llm", "--concurrency", "20"], env)
            with TestClient(create_app(make_settings(server.url, prefix))) as api:
                ids = submit_echo_jobs(api, 150, sleep_ms=20) + submit_llm_jobs(api, 150)
            try:
                wait_for(lambda: stub.app.requests >= 10, timeout=30)
                fault(r, server.port)
                time.sleep(3)  # the fault lasts a while: the duration itself, not a wait for work
                heal(r)
                wait_for(lambda: all_final(r, prefix, ids), timeout=120, interval=0.5)
                assert {rec[b"status"] for rec in jobs(r, prefix, ids)} == {b"succeeded"}
                assert threads.poll() is None and loop.poll() is None, "a worker exited"
                wait_for(lambda: nothing_unacked(r), timeout=30)
                assert "Unrecoverable error" not in procs.logs()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        r.close()
        server.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", [make_replica, make_full], ids=["readonly", "oom"])
def test_a_worker_started_while_redis_refuses_writes_waits_and_then_works(
    tmp_path: Path, fault: Callable[[redis.Redis, int], None]
) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    r = redis.Redis.from_url(server.url, socket_timeout=5)
    prefix = f"startrefused-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)
    try:
        fault(r, server.port)
        worker = procs.start(
            ["worker", "default", "--concurrency", "2"], process_env(server.url, prefix)
        )
        try:
            # it meets the refusal declaring its queues (kombu does that inside MULTI) ...
            wait_for(lambda: "Trying to reconnect" in procs.logs(tail=None), timeout=60)
            assert worker.poll() is None, "the worker exited"
            heal(r)
            # ... and once Redis takes writes again it consumes
            with TestClient(create_app(make_settings(server.url, prefix))) as api:
                ids = submit_echo_jobs(api, 5, sleep_ms=1)
            wait_for(lambda: all_final(r, prefix, ids), timeout=90, interval=0.5)
            assert {rec[b"status"] for rec in jobs(r, prefix, ids)} == {b"succeeded"}
            assert worker.poll() is None, "the worker exited"
            assert "Unrecoverable error" not in procs.logs(tail=None)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        r.close()
        server.stop()
