"""GET /v1/jobs/{id}/stream through a real uvicorn process (TestClient would buffer the stream),
with real workers running the jobs and a real Redis behind: the events, who may follow a job,
disconnects, the per-process limit, and Redis lost before and during a stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.embedded import EmbeddedRedis, free_port
from gateway.job_stream import CLIENT_NAME
from tasks.keys import Keys
from tests.conftest import (
    AUTH,
    PLAIN,
    PLAIN_KEY,
    Processes,
    api_ready,
    process_env,
    wait_for,
)
from tests.e2e.conftest import HandlerStack

pytestmark = pytest.mark.e2e

OTHER_KEY = "test-other-key-0123456789"  # a valid, non-admin key that owns none of these jobs
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
LIMIT = 3
LIFE = ("scheduled", "queued", "running", "succeeded")


@pytest.fixture(scope="module")
def api(
    worker_redis_url: str, prefix: str, workers: Processes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An API process beside the session's workers: a second plain key, LIMIT streams, 1 s
    keep-alives."""
    procs = Processes(tmp_path_factory.mktemp("stream-api"))
    env = process_env(
        worker_redis_url,
        prefix,
        API_KEYS=f"{PLAIN_KEY},{OTHER_KEY}",
        STREAM_MAX_CLIENTS=str(LIMIT),
        STREAM_HEARTBEAT_SECONDS="1",
    )
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield base
    finally:
        procs.stop()


def submit(base: str, body: dict[str, Any], headers: dict[str, str] = PLAIN) -> str:
    """An echo job, as its owner submits it."""
    answer = httpx.post(f"{base}/v1/jobs/echo", json=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def events(response: httpx.Response | Iterator[str]) -> Iterator[tuple[str, Any, str | None]]:
    """(event, data, id) of each event; keep-alive comments are skipped, as EventSource does."""
    name, data, event_id = "message", None, None
    lines = response.iter_lines() if isinstance(response, httpx.Response) else response
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line == "" and data is not None:
            yield name, data, event_id
            name, data, event_id = "message", None, None


def follow(base: str, job_id: str, headers: dict[str, str] = PLAIN) -> list[tuple[str, Any]]:
    """Every event of the job's stream, to its end (which must come)."""
    url = f"{base}/v1/jobs/{job_id}/stream"
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        return [(name, data) for name, data, _ in events(response)]


def open_streams(r: redis.Redis) -> int:
    """Subscribed connections of the API's stream pool, by their CLIENT LIST name."""
    return sum(
        1 for c in r.client_list() if c.get("name") == CLIENT_NAME and int(c.get("sub", 0)) > 0
    )


def test_a_job_is_followed_from_scheduled_to_succeeded_in_order_and_the_stream_ends(
    api: str,
) -> None:
    job_id = submit(api, {"message": "hi", "sleep_ms": 400, "delay_seconds": 1})
    started = time.monotonic()
    got = follow(api, job_id)

    assert got[-1] == ("end", {"status": "succeeded"})
    views = [data for name, data in got if name == "job"]
    statuses = [view["status"] for view in views]
    assert statuses[0] == "scheduled" and statuses[-1] == "succeeded"
    assert "running" in statuses
    # each status once and in the order a job lives them (a quick step may be missed, never
    # reordered)
    assert statuses == sorted(set(statuses), key=LIFE.index), statuses
    assert views[-1]["result"] == {"message": "hi", "attempt": 1}
    assert views[-1]["progress"] == 100
    # the final view is GET /v1/jobs/{id}'s answer
    assert views[-1] == httpx.get(f"{api}/v1/jobs/{job_id}", headers=PLAIN, timeout=10).json()
    assert time.monotonic() - started < 15


def test_event_ids_count_up_and_a_retry_hint_comes_first(api: str) -> None:
    job_id = submit(api, {"message": 1, "sleep_ms": 200})
    url = f"{api}/v1/jobs/{job_id}/stream"
    with httpx.stream("GET", url, headers=PLAIN, timeout=30) as response:
        lines = response.iter_lines()
        first = next(lines)
        ids = [event_id for name, _, event_id in events(lines) if name == "job"]
    assert first.startswith("retry: ")
    assert ids == [str(n) for n in range(1, len(ids) + 1)]


def test_a_final_job_gets_one_event_and_the_end(api: str) -> None:
    job_id = submit(api, {"message": "done"})
    wait_for(
        lambda: (
            httpx.get(f"{api}/v1/jobs/{job_id}", headers=PLAIN, timeout=10).json()["status"]
            == "succeeded"
        )
    )
    got = follow(api, job_id)
    assert [name for name, _ in got] == ["job", "end"]
    assert got[0][1]["status"] == "succeeded"


def test_a_failed_job_ends_with_its_error(api: str) -> None:
    got = follow(api, submit(api, {"fail_permanently": True}))
    assert got[-1] == ("end", {"status": "failed"})
    assert got[-2][1]["error"]["code"] == "echo_failed"


def test_the_owner_and_an_admin_may_follow_a_job_another_key_may_not(api: str) -> None:
    job_id = submit(api, {"message": "mine"})
    assert follow(api, job_id, PLAIN)[-1] == ("end", {"status": "succeeded"})
    assert follow(api, job_id, AUTH)[-1] == ("end", {"status": "succeeded"})  # admin key
    other = httpx.get(f"{api}/v1/jobs/{job_id}/stream", headers=OTHER, timeout=10)
    unknown = httpx.get(f"{api}/v1/jobs/{uuid.uuid4()}/stream", headers=PLAIN, timeout=10)
    as_get = httpx.get(f"{api}/v1/jobs/{job_id}", headers=OTHER, timeout=10)
    for answer in (other, unknown):
        assert answer.status_code == 404
        assert answer.json()["code"] == as_get.json()["code"] == "job_not_found"
        assert answer.headers["content-type"] == "application/json"
    assert httpx.get(f"{api}/v1/jobs/{job_id}/stream", timeout=10).status_code == 401


def test_a_client_that_goes_away_frees_its_subscription(
    api: str, worker_redis_url: str, prefix: str
) -> None:
    r = redis.Redis.from_url(worker_redis_url)
    channel = Keys(prefix).job_changes(job_id := submit(api, {"delay_seconds": 120}))
    before = open_streams(r)
    with httpx.stream("GET", f"{api}/v1/jobs/{job_id}/stream", headers=PLAIN, timeout=30) as sse:
        received = events(sse)  # held: dropping it would close the connection already
        name, view, _ = next(received)
        assert (name, view["status"]) == ("job", "scheduled")
        assert r.pubsub_numsub(channel) == [(channel.encode(), 1)]
        assert open_streams(r) == before + 1
    # the client closed its connection: the server unsubscribes and gives the connection back
    wait_for(lambda: r.pubsub_numsub(channel) == [(channel.encode(), 0)], timeout=5)
    wait_for(lambda: open_streams(r) == before, timeout=5)
    r.close()


def test_beyond_the_limit_a_stream_is_refused_with_503_until_one_closes(api: str) -> None:
    waiting = [submit(api, {"delay_seconds": 120}) for _ in range(LIMIT + 1)]
    with httpx.Client(base_url=api, headers=PLAIN, timeout=30) as http:
        streams = [http.stream("GET", f"/v1/jobs/{job_id}/stream") for job_id in waiting[:LIMIT]]
        opened = [stream.__enter__() for stream in streams]
        try:
            assert [response.status_code for response in opened] == [200] * LIMIT
            refused = httpx.get(f"{api}/v1/jobs/{waiting[-1]}/stream", headers=PLAIN, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["code"] == "unavailable"
            assert int(refused.headers["Retry-After"]) > 0
            # POST /v1/jobs does not wait on streams: their pool is their own
            assert submit(api, {"message": "still ingesting"})
        finally:
            streams.pop().__exit__(None, None, None)

        def admitted() -> bool:
            answer = http.get(f"/v1/jobs/{uuid.uuid4()}/stream")  # a free slot: 404, not 503
            return answer.status_code == 404

        wait_for(admitted, timeout=5)
        for stream in streams:
            stream.__exit__(None, None, None)


def test_a_file_job_streams_its_progress_rising(handler_stack: HandlerStack) -> None:
    blob = bytes(range(256)) * (256 * 1024)  # 64 MiB: each of four hashes reports ~25 steps
    with handler_stack.client() as http:
        uploaded = http.post("/v1/files", files={"file": ("big.bin", blob)})
        assert uploaded.status_code == 201, uploaded.text
        body = {
            "source": {"file_id": uploaded.json()["id"]},
            "operations": [{"name": "sha256"}] * 4,
            "delay_seconds": 1,  # the stream is open before the work starts
        }
        job_id = handler_stack.submit(http, "file", body)
    got = follow(handler_stack.base_url, job_id, AUTH)
    assert got[-1] == ("end", {"status": "succeeded"})
    progress = [data["progress"] for name, data in got if name == "job"]
    assert progress == sorted(progress), progress
    assert progress[0] == 0 and progress[-1] == 100
    assert len({p for p in progress if 0 < p < 100}) >= 3, progress


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to stop."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_lost_mid_stream_ends_it_with_an_error_event_and_a_new_stream_is_a_quick_503(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    procs = Processes(tmp_path)
    port = free_port()
    env = process_env(own_redis.url, "lost:", STREAM_HEARTBEAT_SECONDS="1")
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        job_id = submit(base, {"message": "nobody runs me"})  # no workers: it stays queued
        url = f"{base}/v1/jobs/{job_id}/stream"
        with httpx.stream("GET", url, headers=PLAIN, timeout=10) as response:
            received = events(response)
            assert next(received)[1]["status"] == "queued"
            own_redis.stop()
            started = time.monotonic()
            rest = [(name, data) for name, data, _ in received]
        assert [name for name, _ in rest] == ["unavailable"]
        assert rest[0][1]["code"] == "redis_unavailable"
        assert time.monotonic() - started < 5

        started = time.monotonic()
        refused = httpx.get(url, headers=PLAIN, timeout=10)
        assert refused.status_code == 503
        assert refused.json()["code"] == "redis_unavailable"
        assert refused.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 2.5
    finally:
        procs.stop()


def test_an_open_stream_does_not_hold_the_api_on_sigterm(
    worker_redis_url: str, prefix: str, tmp_path: Path
) -> None:
    procs = Processes(tmp_path)
    port = free_port()
    api_process = procs.start(["api", "--port", str(port)], process_env(worker_redis_url, prefix))
    base = f"http://127.0.0.1:{port}"
    r = redis.Redis.from_url(worker_redis_url)
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        job_id = submit(base, {"delay_seconds": 120})
        channel = Keys(prefix).job_changes(job_id)
        url = f"{base}/v1/jobs/{job_id}/stream"
        with httpx.stream("GET", url, headers=PLAIN, timeout=30) as response:
            received = events(response)
            assert next(received)[1]["status"] == "scheduled"
            api_process.terminate()  # what compose and `gateway dev` send on stop
            started = time.monotonic()
            with pytest.raises(httpx.HTTPError):
                list(received)  # cut off (no `end`: the job is not final): the client reconnects
        api_process.wait(10)  # uvicorn ends by re-raising the SIGTERM it handled: -15
        assert time.monotonic() - started < 8  # GRACEFUL_SHUTDOWN_SECONDS, not a SIGKILL
        assert "Application shutdown complete" in procs.logs(tail=None)  # it shut down cleanly
        assert r.pubsub_numsub(channel) == [(channel.encode(), 0)]
    finally:
        procs.stop()
        r.close()
