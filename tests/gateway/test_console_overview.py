"""The overview's last-hour chart and in-flight figures, against real Redis and real workers: jobs
submitted through the API and run by a real worker show up in the chart's per-minute counts (the
counts the workers write on their real paths, tasks/changes.py), and a running job is in flight."""

from __future__ import annotations

import re
import time
import uuid

import redis
from fastapi.testclient import TestClient

from gateway.console.chart import HEIGHT, chart
from tasks.changes import minute
from tasks.keys import Keys
from tasks.monitor import last_hour
from tests.conftest import API_KEY, AUTH, wait_for
from tests.gateway.test_console_security import sign_in


def totals(page: str) -> dict[str, int]:
    """The chart legend's totals on an overview page."""
    return {
        name: int(n) for name, n in re.findall(r'id="total-(\w+)" data-series="\w+">(\d+)<', page)
    }


def in_flight(page: str, queue: str) -> int:
    row = re.search(rf'<tr data-queue="{queue}">(.*?)</tr>', page, re.S)
    assert row, page
    cell = re.search(r'data-field="in_flight">(\d+)<', row.group(1))
    assert cell, row.group(1)
    return int(cell.group(1))


def final(client: TestClient, job_id: str, status: str) -> bool:
    return bool(client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"] == status)


def test_last_hour_reads_sixty_minutes_oldest_first(quiet_redis: redis.Redis, prefix: str) -> None:
    # a prefix of its own: other tests' jobs on this database count in the same minutes
    keys, now = Keys(f"{prefix}last-hour-{uuid.uuid4().hex[:8]}:"), time.time()
    current = minute(now)
    quiet_redis.hset(keys.activity(current), mapping={"accepted": 5, "dead": 1, "failed": 2})
    quiet_redis.hset(keys.activity(current - 59), mapping={"retried": 3})
    quiet_redis.hset(keys.activity(current - 60), mapping={"accepted": 100})  # out of the hour
    counts = last_hour(quiet_redis, keys, now)
    assert counts["minutes"] == list(range(current - 59, current + 1))
    assert counts["accepted"][-1] == 5 and sum(counts["accepted"]) == 5
    assert counts["retried"][0] == 3
    drawn = chart(counts)
    assert drawn["series"]["failed"]["total"] == 3  # failed and dead together
    assert drawn["max"] == 5
    points = drawn["series"]["accepted"]["points"].split()
    assert len(points) == 60 and points[-1] == "600.0,0.0" and points[0] == f"0.0,{HEIGHT}.0"


def test_jobs_run_by_real_workers_show_in_the_chart_and_in_flight(e2e_client: TestClient) -> None:
    client = e2e_client
    assert sign_in(client, API_KEY)[0] == 303
    before = totals(client.get("/console").text)
    assert set(before) == {"accepted", "succeeded", "failed", "retried"}

    def submit(body: dict[str, object]) -> str:
        answer = client.post("/v1/jobs/echo", json=body, headers=AUTH)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    fine = [submit({"message": i}) for i in range(3)]
    broken = [submit({"message": "no", "fail_permanently": True}) for _ in range(2)]
    flaky = submit({"message": "again", "fail_attempts": 1})
    for job_id in [*fine, flaky]:
        wait_for(lambda job_id=job_id: final(client, job_id, "succeeded"), timeout=30)
    for job_id in broken:
        wait_for(lambda job_id=job_id: final(client, job_id, "failed"), timeout=30)
    after = totals(client.get("/console").text)
    assert after["accepted"] - before["accepted"] >= 6
    assert after["succeeded"] - before["succeeded"] >= 4
    assert after["failed"] - before["failed"] >= 2
    assert after["retried"] - before["retried"] >= 1

    # a job a worker is running is in flight on its queue (the cached figure is forgotten first)
    slow = submit({"message": "slow", "sleep_ms": 4000})
    wait_for(lambda: final(client, slow, "running"), timeout=30)
    client.app.state.console_in_flight = (float("-inf"), {})  # type: ignore[attr-defined]
    assert in_flight(client.get("/console").text, "default") >= 1
    wait_for(lambda: final(client, slow, "succeeded"), timeout=30)
