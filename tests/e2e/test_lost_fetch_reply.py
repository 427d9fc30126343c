"""A message taken by a fetch whose reply never arrived runs within seconds, once (issue 10).

Redis ran the fetch script (the message is out of its queue and recorded under the worker's
consumer) but the connection dropped before the reply reached the worker: what happens when
Redis stops in that instant. The worker is alive, so the reaper leaves the message alone; the
worker itself must give it back (tasks/broker_fetch.py), and only it: a long task it runs meanwhile
stays its own. A proxy on loopback in front of a real Redis (AOF on) loses exactly that reply.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.embedded import EmbeddedRedis
from gateway.main import create_app
from tasks.broker_fetch import FETCH_SCRIPT
from tests.conftest import Processes, make_settings, process_env, wait_for
from tests.e2e.redis_proxy import Command, LosingProxy
from tests.e2e.test_crash_recovery import taken_records
from tests.e2e.test_loop_pool import all_final, jobs, nothing_unacked, submit_llm_jobs
from tests.e2e.test_redis_restart import submit_echo_jobs
from tests.handlers.llm_stub import LlmStub

pytestmark = pytest.mark.e2e

FETCH_SHA = hashlib.sha1(FETCH_SCRIPT.encode()).hexdigest().encode()
RECOVERY_DEADLINE = 15
LONG_S = 12
# The long task each worker holds meanwhile: an echo on a threads worker; an LLM call on a loop
# worker (its greenlet awaits the stub), which also consumes `default`, where the lost message is.
WORKERS = {
    "threads": (["worker", "default", "--concurrency", "4"], "echo"),
    "loop": (["worker", "llm", "default", "--pool", "loop", "--concurrency", "20"], "llm"),
}


@pytest.mark.parametrize("pool", list(WORKERS))
def test_a_message_whose_fetch_reply_was_lost_runs_within_seconds_and_once(
    tmp_path: Path, pool: str
) -> None:
    args, long_kind = WORKERS[pool]
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    proxy = LosingProxy(server.port).start()
    r = redis.Redis.from_url(server.url, socket_timeout=5)
    prefix = f"lost-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path)

    def fetch_taking_a_message(command: Command) -> bool:
        # an idle worker's fetch runs every second with nothing to take: lose one that takes
        # the message
        is_fetch = command[0].upper() == b"EVALSHA" and command[1] == FETCH_SHA
        is_fetch |= command[0].upper() == b"EVAL" and command[1] == FETCH_SCRIPT.encode()
        # KEYS start at index 3: the queue's lists first (a worker of two queues fetches each)
        return is_fetch and command[3] == b"default" and r.llen("default") > 0

    stub = LlmStub(delay=LONG_S)
    stub.start()
    try:
        worker = procs.start(args, process_env(proxy.url, prefix, LLM_BASE_URL=stub.base_url))
        with TestClient(create_app(make_settings(server.url, prefix))) as api:
            if long_kind == "echo":
                [long_job] = submit_echo_jobs(api, 1, sleep_ms=LONG_S * 1000)
            else:
                [long_job] = submit_llm_jobs(api, 1)
            try:
                wait_for(lambda: jobs(r, prefix, [long_job])[0].get(b"status") == b"running", 60)
                proxy.arm(fetch_taking_a_message)
                [lost_job] = submit_echo_jobs(api, 1, sleep_ms=0)
                assert proxy.lost.wait(30), "no fetch took the message"
                lost_at = time.monotonic()
                wait_for(lambda: all_final(r, prefix, [lost_job]), RECOVERY_DEADLINE + 15, 0.1)
                recovered_in = time.monotonic() - lost_at
                print(f"\nfetch reply lost: the message ran {recovered_in:.1f} s later")
                assert recovered_in < RECOVERY_DEADLINE
                [record] = jobs(r, prefix, [lost_job])
                assert (record[b"status"], record[b"attempts"]) == (b"succeeded", b"1")
                # the long task the worker held all along ran once, where it started
                assert jobs(r, prefix, [long_job])[0][b"status"] == b"running"
                wait_for(lambda: all_final(r, prefix, [long_job]), timeout=60)
                [record] = jobs(r, prefix, [long_job])
                assert (record[b"status"], record[b"attempts"]) == (b"succeeded", b"1")
                wait_for(lambda: nothing_unacked(r) and taken_records(r) == 0, timeout=15)
                assert r.llen("default") == 0
                assert worker.poll() is None, "the worker exited"
                logs = procs.logs()
                assert "1 messages taken but never received given back" in logs
                assert "Unrecoverable error" not in logs
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        stub.stop()
        proxy.close()
        r.close()
        server.stop()
