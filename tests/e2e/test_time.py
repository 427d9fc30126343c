"""Time: delayed and run_at jobs wait in the schedule and run once; periodic jobs fire once per
period even with two beats running."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for

# Tiny visibility timeout: a message held unacked for longer is handed to another worker.
SHORT_VISIBILITY = {
    "VISIBILITY_TIMEOUT_SECONDS": "3",
    "DEFAULT_TASK_TIME_LIMIT_SECONDS": "2",
    "FILES_TASK_TIME_LIMIT_SECONDS": "2",
}


@pytest.fixture(scope="module")
def env(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    url = f"{redis_server}/10"
    redis.Redis.from_url(url).flushdb()
    prefix = f"time-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path_factory.mktemp("time"))
    for _ in range(2):  # two workers on one queue: a re-delivered message would find a taker
        procs.start(
            ["worker", "default", "--concurrency", "2"],
            process_env(url, prefix, **SHORT_VISIBILITY),
        )
    client = redis.Redis.from_url(url)
    try:
        yield {"url": url, "prefix": prefix, "procs": procs, "redis": client}
    finally:
        procs.stop()
        client.close()


@pytest.fixture
def api(env: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(env["url"], env["prefix"]))) as client:
        yield client


def wait_status(api: TestClient, job_id: str, status: str, procs: Processes) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        view = api.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        return view if view["status"] == status else None

    try:
        return wait_for(check, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None


def test_a_delay_longer_than_the_visibility_timeout_runs_exactly_once(
    api: TestClient, env: dict[str, Any]
) -> None:
    accepted = api.post("/v1/jobs/echo", json={"message": "late", "delay_seconds": 5}, headers=AUTH)
    job_id = accepted.json()["id"]
    assert accepted.json()["status"] == "scheduled"
    assert api.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"] == "scheduled"

    view = wait_status(api, job_id, "succeeded", env["procs"])

    assert view["attempts"] == 1
    created = datetime.fromisoformat(view["created_at"].replace("Z", "+00:00"))
    started = datetime.fromisoformat(view["started_at"].replace("Z", "+00:00"))
    assert started - created >= timedelta(seconds=4.5)
    # nothing left that could be handed out again: not queued, not scheduled, not held unacked
    r = env["redis"]
    assert r.llen("default") == 0
    assert r.zcard(f"{env['prefix']}schedule") == 0
    assert not [m for m in r.hvals("unacked") if job_id.encode() in m]
    received = env["procs"].logs().count(f"jobs.echo[{job_id}] received")
    assert received == 1


def test_run_at_waits_until_its_time(api: TestClient, env: dict[str, Any]) -> None:
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    body = {"message": "at", "run_at": run_at.isoformat().replace("+00:00", "Z")}
    job_id = api.post("/v1/jobs/echo", json=body, headers=AUTH).json()["id"]

    view = wait_status(api, job_id, "succeeded", env["procs"])

    started = datetime.fromisoformat(view["started_at"].replace("Z", "+00:00"))
    assert started >= run_at - timedelta(milliseconds=50)


def test_run_at_must_carry_a_zone(api: TestClient) -> None:
    response = api.post("/v1/jobs/echo", json={"run_at": "2030-01-01T00:00:00"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("run_at")


def periodic_jobs(r: redis.Redis, prefix: str) -> list[dict[bytes, bytes]]:
    records = [r.hgetall(key) for key in r.scan_iter(f"{prefix}job:*")]
    return sorted(
        (rec for rec in records if rec.get(b"owner") == b"periodic"),
        key=lambda rec: rec[b"created_at"],
    )


def test_a_periodic_job_fires_once_per_period_with_two_beats(
    redis_server: str, tmp_path: Path
) -> None:
    url = f"{redis_server}/9"
    r = redis.Redis.from_url(url)
    r.flushdb()
    prefix = f"beat-{uuid.uuid4().hex[:6]}:"
    schedule = tmp_path / "periodic.toml"
    schedule.write_text(
        '[[periodic]]\nname = "tick"\nkind = "echo"\nevery = 1\npayload = { message = "tick" }\n'
    )
    procs = Processes(tmp_path)
    common = {"PERIODIC_JOBS_FILE": str(schedule)}
    procs.start(["worker", "default", "--concurrency", "2"], process_env(url, prefix, **common))
    beats = [
        procs.start(
            ["beat"], process_env(url, prefix, DATA_DIR=str(tmp_path / f"beat{i}"), **common)
        )
        for i in range(2)
    ]
    try:
        jobs = wait_for(
            lambda: (found := periodic_jobs(r, prefix)) and len(found) >= 6 and found, timeout=40
        )
        stamps = [
            datetime.fromisoformat(j[b"created_at"].decode().replace("Z", "+00:00")) for j in jobs
        ]
        gaps = [(b - a).total_seconds() for a, b in pairwise(stamps)]
        assert min(gaps) > 0.5, gaps  # two firing beats would put two jobs in some periods
        logs = procs.logs()
        assert logs.count("beat: leading") == 1 and "beat: standby" in logs, logs

        # the leader stops: the standby takes over and firing goes on
        leader = next(
            b
            for b, (_, log) in zip(beats, procs.children[1:], strict=True)
            if "leading" in log.read_text()
        )
        leader.terminate()
        leader.wait(15)
        seen = len(periodic_jobs(r, prefix))
        wait_for(lambda: len(periodic_jobs(r, prefix)) >= seen + 3, timeout=40)
        statuses = {j[b"status"] for j in periodic_jobs(r, prefix)[:5]}
        assert statuses == {b"succeeded"}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        r.close()
