"""The events index on real Redis: written by the ingest script, read by filters and cursors.

Events come in through POST /v1/webhooks/{source} (the app in-process, the quiet database: no
worker moves them on, so a status is set on the record by hand where a filter needs one).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from redis.asyncio import Redis as AsyncRedis

from gateway.main import create_app
from tasks.event_index import EventIndex, EventPage
from tasks.keys import Keys
from tasks.paging import InvalidCursor
from tests.conftest import make_settings

SECRET = "index-test-inbound-secret"
SOURCES = """
[sources.gh]
scheme = "github"
secrets_env = ["INDEX_TEST_SECRET"]
events = ["push", "issues", "ping"]

[sources.other]
scheme = "github"
secrets_env = ["INDEX_TEST_SECRET"]
"""
TTL = 7 * 24 * 3600


@pytest.fixture
def hooks(quiet_redis_url: str, prefix: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app with two GitHub-scheme sources, on the quiet database."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    settings = make_settings(
        quiet_redis_url, prefix, webhook_sources_file=path, job_ttl_seconds=TTL
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INDEX_TEST_SECRET", SECRET)
        app = create_app(settings)
    with TestClient(app) as client:
        yield client


def send(client: TestClient, source: str, kind: str, delivery: str | None = None) -> str:
    """A signed GitHub-style webhook; returns the event id (of the original, for a duplicate)."""
    body = json.dumps({"n": uuid.uuid4().hex}).encode()
    answer = client.post(
        f"/v1/webhooks/{source}",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": kind,
            "x-github-delivery": delivery or str(uuid.uuid4()),
            "x-hub-signature-256": "sha256="
            + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        },
    )
    assert answer.status_code in (200, 202), answer.text
    return str(answer.json()["id"])


def listing(url: str, prefix: str, **options: Any) -> EventPage:
    """One page from the index, read as the console reads it."""

    async def read() -> EventPage:
        client = AsyncRedis.from_url(url)
        try:
            index = EventIndex(client, Keys(prefix), TTL)
            return await index.page(
                now_us=time.time_ns() // 1000, sources=("gh", "other"), **options
            )
        finally:
            await client.aclose()

    return asyncio.run(read())


def ids(page: EventPage) -> list[str]:
    return [event["id"] for event in page.events]


def test_ingest_indexes_each_event_in_all_and_its_source_once(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    before = time.time_ns() // 1000
    first = send(hooks, "gh", "push", delivery="d-1")
    assert send(hooks, "gh", "push", delivery="d-1") == first  # a duplicate: not indexed again
    ignored = send(hooks, "gh", "deployment")  # a type gh does not accept: recorded, indexed
    other = send(hooks, "other", "push")
    after = time.time_ns() // 1000

    assert quiet_redis.zcard(keys.events_by_time) == 3
    for event_id in (first, ignored, other):
        score = quiet_redis.zscore(keys.events_by_time, event_id)
        assert score is not None and before <= score <= after
    assert set(quiet_redis.zrange(keys.events_from("gh"), 0, -1)) == {
        first.encode(),
        ignored.encode(),
    }
    assert quiet_redis.zrange(keys.events_from("other"), 0, -1) == [other.encode()]
    assert 0 < quiet_redis.ttl(keys.events_from("gh")) <= TTL
    assert quiet_redis.hget(keys.event(ignored), "status") == b"ignored"


def test_ingest_trims_entries_past_the_ttl(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    old = (time.time() - TTL - 60) * 1_000_000
    young = (time.time() - TTL + 3600) * 1_000_000
    for key in (keys.events_by_time, keys.events_from("gh")):
        quiet_redis.zadd(key, {"too-old": old, "young-enough": young})
    fresh = send(hooks, "gh", "push")
    for key in (keys.events_by_time, keys.events_from("gh")):
        assert set(quiet_redis.zrange(key, 0, -1)) == {b"young-enough", fresh.encode()}


def test_filters_by_source_type_glob_and_status(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str, quiet_redis_url: str
) -> None:
    keys = Keys(prefix)
    push = send(hooks, "gh", "push")
    issue = send(hooks, "gh", "issues")
    ping = send(hooks, "gh", "ping")
    other = send(hooks, "other", "push")
    quiet_redis.hset(keys.event(issue), "status", "failed")

    assert ids(listing(quiet_redis_url, prefix)) == [other, ping, issue, push]
    assert ids(listing(quiet_redis_url, prefix, source="gh")) == [ping, issue, push]
    assert ids(listing(quiet_redis_url, prefix, source="other")) == [other]
    assert ids(listing(quiet_redis_url, prefix, type_pattern="push")) == [other, push]
    assert ids(listing(quiet_redis_url, prefix, type_pattern="p*")) == [other, ping, push]
    assert ids(listing(quiet_redis_url, prefix, status="failed")) == [issue]
    assert ids(listing(quiet_redis_url, prefix, source="gh", status="received")) == [ping, push]
    page = listing(quiet_redis_url, prefix, source="other", type_pattern="issues")
    assert page.events == [] and page.cursor is None and not page.bound_hit
    row = listing(quiet_redis_url, prefix, source="other").events[0]
    assert row["source"] == "other" and row["type"] == "push" and row["status"] == "received"
    assert row["received_at"] and row["body_bytes"] > 0


def test_cursor_pages_cover_every_event_once_while_new_ones_arrive(
    hooks: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    sent = [send(hooks, "gh", "push") for _ in range(23)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = listing(quiet_redis_url, prefix, source="gh", cursor=cursor, limit=5)
        seen += ids(page)
        send(hooks, "gh", "push")  # newer than every page: never shows up on an older one
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == list(reversed(sent))
    with pytest.raises(InvalidCursor):
        listing(quiet_redis_url, prefix, cursor="not-a-cursor")


def test_events_sharing_a_score_page_by_id_without_repeats(
    quiet_redis: redis.Redis, quiet_redis_url: str, prefix: str
) -> None:
    quiet_redis.flushdb()
    keys = Keys(prefix)
    now = time.time_ns() // 1000
    members = [f"ev-{i:03d}" for i in range(130)]  # more than one read batch at one score
    quiet_redis.zadd(keys.events_by_time, dict.fromkeys(members, now))
    for member in members:
        quiet_redis.hset(keys.event(member), mapping={"source": "gh", "status": "received"})
    seen: list[str] = []
    cursor = None
    while True:
        page = listing(quiet_redis_url, prefix, cursor=cursor, limit=40)
        seen += ids(page)
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == sorted(members, reverse=True)


def test_an_expired_record_is_skipped_and_taken_out_of_the_indexes(
    hooks: TestClient, quiet_redis: redis.Redis, quiet_redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    kept, gone, newest = (send(hooks, "gh", "push") for _ in range(3))
    quiet_redis.delete(keys.event(gone))  # evicted, or its TTL ran out early
    page = listing(quiet_redis_url, prefix)
    assert ids(page) == [newest, kept]
    assert page.skipped_expired == 1
    assert quiet_redis.zscore(keys.events_by_time, gone) is None
    assert quiet_redis.zscore(keys.events_from("gh"), gone) is None
    assert listing(quiet_redis_url, prefix).skipped_expired == 0


def test_a_scan_bound_stops_the_page_and_its_cursor_continues(
    hooks: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    rare = send(hooks, "gh", "issues")
    for _ in range(12):
        send(hooks, "gh", "push")
    page = listing(quiet_redis_url, prefix, type_pattern="issues", max_scan=5, limit=10)
    assert page.events == [] and page.bound_hit and page.scanned == 5 and page.cursor
    found: list[str] = []
    cursor: str | None = page.cursor
    while cursor:
        page = listing(
            quiet_redis_url, prefix, type_pattern="issues", max_scan=5, limit=10, cursor=cursor
        )
        found += ids(page)
        cursor = page.cursor
    assert found == [rare]
