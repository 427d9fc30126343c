"""The reaper against a real Redis: a dead consumer's messages go back, a live one's never do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from tasks.consumers import ConsumerKeys
from tasks.protocol import task_message
from tasks.reaper import Reaper

UNACKED, INDEX = "unacked", "unacked_index"
KEYS = ConsumerKeys(UNACKED)


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_server}/12")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def take(r: redis.Redis, consumer: str, queue: str, job: str) -> str:
    """Record a message as the fetch script does: kombu's unacked record plus the taken entry."""
    raw = task_message("jobs.echo", job, queue, [job])
    tag = json.loads(raw)["properties"]["delivery_tag"]
    r.zadd(INDEX, {tag: 1.0})
    r.hset(UNACKED, tag, f'[{raw},"",{json.dumps(queue)}]')
    r.hset(KEYS.taken(consumer), tag, queue)
    r.sadd(KEYS.registry, consumer)
    return str(tag)


def passes(reaper: Reaper, n: int) -> int:
    restored = 0
    for _ in range(n):
        reaper.client.delete(KEYS.lock)  # one pass per interval; here the interval is over
        restored += reaper.run(lock_ms=1000)
    return restored


def test_a_dead_consumer_s_messages_go_back_and_a_live_one_s_stay(r: redis.Redis) -> None:
    dead = [take(r, "dead", "default", f"j{i}") for i in range(3)]
    live = take(r, "live", "llm", "long")
    r.set(KEYS.alive("live"), "1", px=60_000)
    reaper = Reaper(r, UNACKED, INDEX, grace=0)
    # the first pass only notes the consumer missing: a worker cut off by a Redis restart
    # renews within a second and is never mistaken for a dead one
    assert passes(reaper, 1) == 0 and r.llen("default") == 0
    assert passes(reaper, 1) == 3
    back = [json.loads(m) for m in r.lrange("default", 0, -1)]
    assert {m["properties"]["delivery_tag"] for m in back} == set(dead)
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in back)
    # nothing of the dead consumer is left; the live consumer's message is untouched
    assert r.hkeys(UNACKED) == [live.encode()] and r.zrange(INDEX, 0, -1) == [live.encode()]
    assert not r.exists(KEYS.taken("dead")) and r.smembers(KEYS.registry) == {b"live"}
    assert r.llen("llm") == 0
    assert passes(reaper, 3) == 0  # and it stays untouched, pass after pass


def test_a_consumer_back_before_the_grace_is_over_keeps_its_messages(r: redis.Redis) -> None:
    take(r, "slow", "default", "j")
    reaper = Reaper(r, UNACKED, INDEX, grace=3600)
    assert passes(reaper, 1) == 0  # noted missing
    r.set(KEYS.alive("slow"), "1", px=60_000)  # renewed once Redis answered again
    assert passes(reaper, 2) == 0 and not r.hexists(KEYS.missing, "slow")
    assert r.hlen(UNACKED) == 1 and r.llen("default") == 0


def test_a_message_acked_meanwhile_is_not_run_again(r: redis.Redis) -> None:
    tag = take(r, "dead", "default", "j")
    r.hdel(UNACKED, tag)  # acked (the taken entry is removed with it, or left stale)
    r.zrem(INDEX, tag)
    assert passes(Reaper(r, UNACKED, INDEX, grace=0), 2) == 0
    assert r.llen("default") == 0 and not r.exists(KEYS.taken("dead"))


def test_one_reaper_per_interval(r: redis.Redis) -> None:
    take(r, "dead", "default", "j")
    first, second = Reaper(r, UNACKED, INDEX, grace=0), Reaper(r, UNACKED, INDEX, grace=0)
    assert first.run(lock_ms=60_000) == 0  # holds the lock (and notes the consumer missing)
    assert second.run(lock_ms=60_000) == 0 and r.hlen(UNACKED) == 1
    assert r.llen("default") == 0


def test_a_live_consumer_s_message_past_its_queue_s_time_limit_goes_back(r: redis.Redis) -> None:
    # held for 1000 s by a live worker: past `default`'s 300 s limit, within `files`' hour
    overdue = take(r, "stuck", "default", "j1")
    long_file = take(r, "stuck", "files", "f1")
    recent = take(r, "stuck", "default", "j2")
    now = time.time()
    r.zadd(INDEX, {overdue: now - 1000, long_file: now - 1000, recent: now - 10})
    r.set(KEYS.alive("stuck"), "1", px=60_000)
    reaper = Reaper(r, UNACKED, INDEX, grace=3, time_limits={"default": 300, "files": 3600})
    assert passes(reaper, 2) == 1
    [back] = [json.loads(m) for m in r.lrange("default", 0, -1)]
    assert back["properties"]["delivery_tag"] == overdue
    assert set(r.hkeys(UNACKED)) == {long_file.encode(), recent.encode()}
    assert r.llen("files") == 0
