"""Walking the dead-letter set (tasks/dead_letter_walk.py) against real Redis: letters sharing a
time of death (more than a batch of them) page and count each once; a bad cursor is refused."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio import Redis

from tasks import dead_letter_walk as walk
from tasks.dead_letters import DeadLetters
from tasks.keys import Keys
from tasks.paging import InvalidCursor


def test_ties_beyond_a_batch_page_and_count_once(
    quiet_redis: redis.Redis, quiet_redis_url: str, prefix: str
) -> None:
    quiet_redis.flushdb()
    keys = Keys(prefix)
    members = [f"job:j{i:04d}" for i in range(walk.SCAN_BATCH + 150)]
    pipe = quiet_redis.pipeline(transaction=False)
    for i, member in enumerate(members):
        pipe.hset(
            keys.job(member[4:]), mapping={"id": member[4:], "kind": "echo" if i % 3 else "email"}
        )
    pipe.zadd(keys.dead_letters, dict.fromkeys(members, 1000.0))  # all died at the same moment
    pipe.execute()

    async def run() -> tuple[list[str], int, int]:
        client = Redis.from_url(quiet_redis_url)
        store = DeadLetters(client, keys, 600)
        seen: list[str] = []
        cursor = None
        while True:
            found = await walk.page(
                store, kind="echo", since=0, until=2000, limit=100, cursor=cursor
            )
            seen += [entry["id"] for entry in found.entries]
            if found.older is None:
                break
            cursor = found.older
        echo = await walk.count(store, kind="echo", since=0, until=2000)
        email = await walk.count(store, kind="email", since=0, until=2000)
        with pytest.raises(InvalidCursor):
            await walk.page(store, kind=None, since=0, until=2000, limit=10, cursor="1:x")
        await client.aclose()
        return seen, echo, email

    seen, echo, email = asyncio.run(run())
    wanted = [m for i, m in enumerate(members) if i % 3]
    assert sorted(seen) == wanted and len(seen) == len(set(seen))
    assert seen == sorted(seen, reverse=True)  # newest first: ties by member, descending
    assert (echo, email) == (len(wanted), len(members) - len(wanted))
