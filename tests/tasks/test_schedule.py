"""The schedule against real Redis: due messages move to their queue once, early ones stay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tasks.schedule import move_due


@pytest.fixture
def r(quiet_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(quiet_redis_url)
    client.flushdb()
    yield client
    client.close()


def test_only_due_messages_move(r: redis.Redis) -> None:
    now = time.time()
    r.zadd("s", {"q1\nearly": now - 1, "q2\nlate": now + 60})

    assert move_due(r, "s", now) == 1
    assert r.lrange("q1", 0, -1) == [b"early"]
    assert r.llen("q2") == 0
    assert r.zrange("s", 0, -1) == [b"q2\nlate"]


def test_concurrent_movers_move_each_message_once(r: redis.Redis) -> None:
    now = time.time()
    r.zadd("s", {f"q\nm{i}": now - 1 for i in range(2000)})

    def mover() -> None:
        client = redis.Redis(connection_pool=r.connection_pool)
        while move_due(client, "s", now, limit=50):
            pass

    threads = [threading.Thread(target=mover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    moved = r.lrange("q", 0, -1)
    assert len(moved) == 2000
    assert len(set(moved)) == 2000
