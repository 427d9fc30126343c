"""Replaying a range of dead letters from the console, with the session's real workers: the jobs
of the kind and range run again (and succeed), the other kinds and the ones out of range stay
dead, and two replays of the same range at once start each job once."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from tasks.keys import Keys
from tests.conftest import API_KEY, AUTH, wait_for
from tests.gateway.test_console_dead_letters import EMAIL_BODY, iso, plant
from tests.gateway.test_console_security import csrf, sign_in

pytestmark = pytest.mark.e2e


def view(client: TestClient, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_range_replay_runs_that_kind_and_range_once_and_leaves_the_rest_dead(
    e2e_client: TestClient, worker_redis_url: str, prefix: str
) -> None:
    client, keys = e2e_client, Keys(prefix)
    r = redis.Redis.from_url(worker_redis_url)
    # echo jobs that fail every attempt of their budget (3): a real worker dead-letters them;
    # replayed, their 4th attempt succeeds
    ids = []
    for i in range(5):
        answer = client.post("/v1/jobs/echo", json={"message": i, "fail_attempts": 3}, headers=AUTH)
        assert answer.status_code == 202, answer.text
        ids.append(str(answer.json()["id"]))
    for job_id in ids:
        wait_for(lambda job_id=job_id: view(client, job_id)["status"] == "dead", timeout=60)
    # time of death, moved to fixed moments (like make_due_now): 3 in the range, 2 outside
    base = float(int(time.time() - 30 * 86_400))
    for job_id, at in zip(ids, (base + 10, base + 11, base + 12, base + 1, base + 50), strict=True):
        assert r.zadd(keys.dead_letters, {f"job:{job_id}": at}, xx=True, ch=True) == 1
    inside, outside = ids[:3], ids[3:]
    # another kind in the same range (accepted an hour ahead, so no worker claims them)
    emails = [plant(client, r, prefix, "email", EMAIL_BODY, base + 11) for _ in range(2)]

    assert sign_in(client, API_KEY)[0] == 303
    form = {
        "kind": "echo",
        "since": iso(base + 5),
        "until": iso(base + 20),
        "csrf_token": csrf(client),
    }
    confirm = client.get("/console/dead-letters/replay-range", params=form)
    assert re.search(r'id="range-count">3<', confirm.text), confirm.text

    # two operators confirm the same range at once: each dead letter starts once
    answers: list[str] = []

    def post() -> None:
        answers.append(client.post("/console/dead-letters/replay-range", data=form).text)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    replayed = [int(re.findall(r'id="replayed-count">(\d+)<', page)[0]) for page in answers]
    skipped = [int(re.findall(r'id="skipped-count">(\d+)<', page)[0]) for page in answers]
    assert sum(replayed) == 3, answers
    assert sum(skipped) <= 3

    for job_id in inside:
        done = wait_for(
            lambda job_id=job_id: (v := view(client, job_id))["status"] == "succeeded" and v,
            timeout=30,
        )
        assert done["attempts"] == 4  # three before, one after the replay: run once
    dead = {m.decode() for m in r.zrange(keys.dead_letters, 0, -1)}
    for job_id in [*outside, *emails]:
        assert f"job:{job_id}" in dead
        assert view(client, job_id)["status"] in ("dead", "failed")
    for job_id in inside:
        assert f"job:{job_id}" not in dead
    # the session's workers share this database: leave no dead letters for other tests
    r.zrem(keys.dead_letters, *(f"job:{job_id}" for job_id in [*outside, *emails]))
    r.hincrby(keys.dead_letter_counts, "echo", -len(outside))
    r.hincrby(keys.dead_letter_counts, "email", -len(emails))
    r.close()
