"""The console's dead-letter pages in-process against real Redis: paging past the newest 100 by
time of death, filters by kind and time, and the range replay's count and result (what it queues,
what it leaves dead). The range replay with real workers is in tests/e2e/test_console_ranges.py."""

from __future__ import annotations

import re
import time

import redis
from fastapi.testclient import TestClient

from tasks.keys import Keys
from tasks.queues import DEFAULT, EMAIL
from tests.conftest import API_KEY, AUTH
from tests.gateway.test_console_security import csrf, sign_in

DAY = 86_400.0
BASE = float(int(time.time() - 10 * DAY))  # every planted letter died at BASE + its index (seconds)


def plant(client: TestClient, r: redis.Redis, prefix: str, kind: str, body: dict, at: float) -> str:
    """A job accepted through the API, then dead-lettered as a worker does, dying at ``at``.

    Accepted for an hour from now: a worker on the session's stack never claims it before it is
    marked failed (a job queued now could be claimed first and then end succeeded).
    """
    answer = client.post(f"/v1/jobs/{kind}", json={**body, "delay_seconds": 3600}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    keys = Keys(prefix)
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.job(job_id), mapping={"status": "failed", "finished_at": "2026-01-01T00:00:00Z"})
    pipe.persist(keys.job(job_id))
    pipe.zadd(keys.dead_letters, {f"job:{job_id}": at})
    pipe.hincrby(keys.dead_letter_counts, kind)
    pipe.execute()
    return job_id


def listed(page: str) -> list[str]:
    """The dead-letter ids a listing page shows, in order."""
    return re.findall(r'<tr data-id="([^"]+)"', page)


def older_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" id="older"', page)
    return found.group(1).replace("&amp;", "&") if found else None


def iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))


EMAIL_BODY = {"to": ["ops@example.com"], "subject": "s", "text": "t"}


def test_250_dead_letters_page_across_three_pages_without_duplicates(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    planted = [
        plant(client, quiet_redis, prefix, "echo", {"message": i}, BASE + i) for i in range(250)
    ]
    assert sign_in(client, API_KEY)[0] == 303
    pages, link = [], "/console/dead-letters"
    while link is not None:
        answer = client.get(link if link.startswith("/") else f"/console/dead-letters{link}")
        assert answer.status_code == 200, answer.text
        pages.append(listed(answer.text))
        link = older_link(answer.text)
        if len(pages) == 1:
            # letters dying meanwhile are newer than the cursor: they shift no later page
            plant(client, quiet_redis, prefix, "echo", {"message": "late"}, BASE + 1000)
    assert [len(p) for p in pages] == [100, 100, 50]
    seen = [member for p in pages for member in p]
    # newest first, each once, all of them
    assert seen == [f"job:{job_id}" for job_id in reversed(planted)]
    # a cursor the console did not make is refused as a page, not a 500
    assert client.get("/console/dead-letters?cursor=nope").status_code == 400


def test_filters_by_kind_and_time_and_pages_within_them(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    echoes = [
        plant(client, quiet_redis, prefix, "echo", {"message": i}, BASE + i) for i in range(6)
    ]
    emails = [
        plant(client, quiet_redis, prefix, "email", EMAIL_BODY, BASE + 100 + i) for i in range(3)
    ]
    assert sign_in(client, API_KEY)[0] == 303
    page = client.get("/console/dead-letters", params={"kind": "email"}).text
    assert listed(page) == [f"job:{j}" for j in reversed(emails)]
    page = client.get(
        "/console/dead-letters",
        params={"kind": "echo", "since": iso(BASE + 1), "until": iso(BASE + 4)},
    ).text
    assert listed(page) == [f"job:{j}" for j in reversed(echoes[1:5])]
    assert older_link(page) is None
    assert client.get("/console/dead-letters", params={"kind": "nope"}).status_code == 400
    assert client.get("/console/dead-letters", params={"since": "yesterday"}).status_code == 400


def test_a_range_replay_confirms_the_count_and_replays_only_that_kind_and_range(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    echoes = [
        plant(client, quiet_redis, prefix, "echo", {"message": i}, BASE + i) for i in range(8)
    ]
    emails = [plant(client, quiet_redis, prefix, "email", EMAIL_BODY, BASE + 3) for _ in range(2)]
    quiet_redis.delete(DEFAULT, EMAIL)  # the submissions' own messages: count only replays
    assert sign_in(client, API_KEY)[0] == 303
    since, until = iso(BASE + 2), iso(BASE + 5)
    confirm = client.get(
        "/console/dead-letters/replay-range",
        params={"kind": "echo", "since": since, "until": until},
    )
    assert confirm.status_code == 200
    assert re.search(r'id="range-count">4<', confirm.text), confirm.text
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', confirm.text))
    # CSRF: without the token nothing is replayed
    refused = client.post(
        "/console/dead-letters/replay-range",
        data={k: v for k, v in form.items() if k != "csrf_token"},
    )
    assert refused.status_code == 403
    assert quiet_redis.llen(DEFAULT) == 0
    done = client.post("/console/dead-letters/replay-range", data=form)
    assert done.status_code == 200, done.text
    assert re.search(r'id="replayed-count">4<', done.text)
    assert re.search(r'id="skipped-count">0<', done.text)
    keys = Keys(prefix)
    dead = {m.decode() for m in quiet_redis.zrange(keys.dead_letters, 0, -1)}
    assert dead == {f"job:{j}" for j in [*echoes[:2], *echoes[6:], *emails]}
    assert quiet_redis.llen(DEFAULT) == 4 and quiet_redis.llen(EMAIL) == 0
    assert int(quiet_redis.hget(keys.dead_letter_counts, "echo") or 0) == 4
    # posted again (a second tab, a double click): nothing left to replay, nothing sent twice
    again = client.post(
        "/console/dead-letters/replay-range", data={**form, "csrf_token": csrf(client)}
    )
    assert re.search(r'id="replayed-count">0<', again.text)
    assert quiet_redis.llen(DEFAULT) == 4
