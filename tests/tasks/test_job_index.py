"""The job indexes on a real Redis: written with the record, moved with every status change, listed
newest first by filter and cursor, expired records skipped and forgotten, old entries trimmed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from core.statuses import JobStatus
from tasks import job_index
from tasks.claims import JOB_CLAIM, claim_sync
from tasks.dead_letters import DeadLetters
from tasks.job_index import Filters, list_jobs
from tasks.keys import Keys
from tasks.paging import InvalidCursor
from tasks.pipelined import Commands, PipelinedRedis
from tasks.store import NewJob, create_sync, decode

KINDS = ("echo", "email")


@pytest.fixture
def keys(quiet_redis: redis.Redis) -> Iterator[Keys]:
    """A prefix of this test's own on the quiet database."""
    yield Keys(f"index-{uuid.uuid4().hex[:6]}:")


def create(client: redis.Redis, keys: Keys, kind: str = "echo", due: float = 0.0) -> str:
    job_id = uuid.uuid4().hex
    job = NewJob(id=job_id, kind=kind, owner="o", payload={"n": 1}, max_attempts=3, due=due)
    assert create_sync(client, keys, 3600, job, "message", f"{keys.prefix}queue") is None
    return job_id


def where(client: redis.Redis, keys: Keys, job_id: str) -> list[str]:
    """The (kind, status) sets holding ``job_id``."""
    return [
        f"{kind}:{status}"
        for kind in KINDS
        for status in JobStatus
        if client.zscore(keys.jobs_by(kind, status), job_id) is not None
    ]


def claim(client: redis.Redis, keys: Keys, job_id: str) -> None:
    args = ("now", 60, keys.jobs_by_prefix, job_id)
    claim_sync(
        client,
        JOB_CLAIM,
        keys.job(job_id),
        *args,
        channel=keys.job_changes(job_id),
        index=keys.jobs_by_time,
    )


def write(url: str, keys: Keys, job_id: str, status: str) -> None:
    """What the worker's retry/finish transaction does to the index and the status."""

    async def run() -> None:
        conn = PipelinedRedis(url, 2.0)
        writes = Commands()
        job = decode(redis.Redis.from_url(url).hgetall(keys.job(job_id)))  # as claimed
        job_index.ended(writes, keys, job, status)
        writes.hset(keys.job(job_id), mapping={"status": status})
        await conn.transaction(writes)
        await conn.close()

    asyncio.run(run())


def listing(url: str, keys: Keys, filters: Filters, **kw: Any) -> job_index.JobPage:
    async def run() -> job_index.JobPage:
        client = AsyncRedis.from_url(url)
        try:
            return await list_jobs(client, keys, filters, kinds=KINDS, **kw)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_job_moves_between_sets_with_every_status_change(
    quiet_redis: redis.Redis, quiet_redis_url: str, keys: Keys
) -> None:
    job_id = create(quiet_redis, keys)
    score = quiet_redis.zscore(keys.jobs_by_time, job_id)
    assert score is not None and abs(score / 1000 - time.time()) < 5
    assert where(quiet_redis, keys, job_id) == ["echo:queued"]
    claim(quiet_redis, keys, job_id)
    assert where(quiet_redis, keys, job_id) == ["echo:running"]
    write(quiet_redis_url, keys, job_id, JobStatus.RETRYING)
    assert where(quiet_redis, keys, job_id) == ["echo:retrying"]
    claim(quiet_redis, keys, job_id)
    write(quiet_redis_url, keys, job_id, JobStatus.DEAD)
    assert where(quiet_redis, keys, job_id) == ["echo:dead"]
    # same score in every set: the creation time
    assert quiet_redis.zscore(keys.jobs_by("echo", "dead"), job_id) == score

    # a dead letter replayed goes back to queued, in the replay script
    quiet_redis.zadd(keys.dead_letters, {f"job:{job_id}": time.time()})

    async def replay() -> bool:
        client = AsyncRedis.from_url(quiet_redis_url)
        try:
            return await DeadLetters(client, keys, 3600).replay(f"job:{job_id}")
        finally:
            await client.aclose()

    assert asyncio.run(replay())
    assert where(quiet_redis, keys, job_id) == ["echo:queued"]
    assert quiet_redis.hget(keys.job(job_id), "status") == b"queued"

    scheduled = create(quiet_redis, keys, "email", due=time.time() + 60)
    assert where(quiet_redis, keys, scheduled) == ["email:scheduled"]


def test_filters_by_kind_status_and_time(
    quiet_redis: redis.Redis, quiet_redis_url: str, keys: Keys
) -> None:
    echoes = [create(quiet_redis, keys, "echo") for _ in range(3)]
    mail = create(quiet_redis, keys, "email")
    claim(quiet_redis, keys, echoes[1])
    write(quiet_redis_url, keys, echoes[1], JobStatus.SUCCEEDED)

    def ids(filters: Filters) -> list[str]:
        return [row["id"] for row in listing(quiet_redis_url, keys, filters).jobs]

    assert set(ids(Filters())) == {*echoes, mail}
    assert set(ids(Filters(kind="echo"))) == set(echoes)
    assert ids(Filters(kind="echo", status="succeeded")) == [echoes[1]]
    assert set(ids(Filters(status="queued"))) == {echoes[0], echoes[2], mail}
    created = {
        row["id"]: row["created_ms"] for row in listing(quiet_redis_url, keys, Filters()).jobs
    }
    first = created[echoes[0]]
    assert echoes[0] not in ids(Filters(since_ms=first + 1))
    assert ids(Filters(until_ms=first - 1)) == []
    assert echoes[0] in ids(Filters(since_ms=first, until_ms=first))
    row = listing(quiet_redis_url, keys, Filters(kind="echo", status="succeeded")).jobs[0]
    assert row["kind"] == "echo" and row["status"] == "succeeded" and row["attempts"] == 1


def test_cursor_pages_miss_nothing_and_repeat_nothing_while_jobs_arrive(
    quiet_redis: redis.Redis, quiet_redis_url: str, keys: Keys
) -> None:
    # many jobs in one millisecond too: the cursor orders ties by id, as Redis does
    now_ms = int(time.time() * 1000)
    tied = [f"tie-{i:03d}" for i in range(30)]
    for job_id in tied:
        quiet_redis.hset(
            keys.job(job_id), mapping={"id": job_id, "kind": "echo", "status": "queued"}
        )
        quiet_redis.hset(keys.job(job_id), "created_at", "2026-01-01T00:00:00.000Z")
        quiet_redis.zadd(keys.jobs_by_time, {job_id: now_ms - 10_000})
        quiet_redis.zadd(keys.jobs_by("echo", "queued"), {job_id: now_ms - 10_000})
    for _ in range(45):
        create(quiet_redis, keys)
    for filters in (Filters(), Filters(kind="echo"), Filters(status="queued")):
        before = {m.decode() for m in quiet_redis.zrange(keys.jobs_by_time, 0, -1)}
        seen: list[str] = []
        cursor = None
        while True:
            page = listing(quiet_redis_url, keys, filters, limit=7, cursor=cursor)
            seen += [row["id"] for row in page.jobs]
            create(quiet_redis, keys)  # newer than anything listed: never on a later page
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)), filters
        assert set(seen) == before, filters
        assert seen[-30:] == sorted(tied, reverse=True)
    with pytest.raises(InvalidCursor):
        listing(quiet_redis_url, keys, Filters(), cursor="nope")


def test_expired_records_are_skipped_and_their_entries_removed(
    quiet_redis: redis.Redis, quiet_redis_url: str, keys: Keys
) -> None:
    for _ in range(10):
        create(quiet_redis, keys)
    # newest first; jobs of one millisecond by id, as Redis orders them
    ids = [m.decode() for m in quiet_redis.zrange(keys.jobs_by_time, 0, -1)]
    gone = ids[2:8]
    quiet_redis.delete(*(keys.job(job_id) for job_id in gone))  # as their TTL would
    page = listing(quiet_redis_url, keys, Filters(kind="echo"), limit=3)
    assert [row["id"] for row in page.jobs] == [ids[9], ids[8], ids[1]]
    assert page.next_cursor is not None
    for job_id in gone:
        assert quiet_redis.zscore(keys.jobs_by_time, job_id) is None
        assert quiet_redis.zscore(keys.jobs_by("echo", "queued"), job_id) is None
    rest = listing(quiet_redis_url, keys, Filters(kind="echo"), limit=3, cursor=page.next_cursor)
    assert [row["id"] for row in rest.jobs] == [ids[0]]
    assert rest.next_cursor is None


def test_the_trim_drops_entries_older_than_the_ttl(quiet_redis: redis.Redis, keys: Keys) -> None:
    old, new = "old-job", create(quiet_redis, keys)
    long_ago = int((time.time() - 7200) * 1000)
    quiet_redis.zadd(keys.jobs_by_time, {old: long_ago})
    quiet_redis.zadd(keys.jobs_by("email", "succeeded"), {old: long_ago})
    assert job_index.trim(quiet_redis, keys, KINDS, ttl=3600) == 2
    assert quiet_redis.zscore(keys.jobs_by_time, old) is None
    assert quiet_redis.zscore(keys.jobs_by_time, new) is not None
