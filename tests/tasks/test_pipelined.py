"""The API's pipelined Redis connection against real Redis: order, scripts, reconnects."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis

from tasks.pipelined import Commands, PipelinedRedis

SCRIPT = "return redis.call('INCR', KEYS[1])"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_many_callers_at_once_each_get_their_own_reply(quiet_redis_url: str) -> None:
    redis.Redis.from_url(quiet_redis_url).delete("n")

    async def main() -> list[int]:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            return list(await asyncio.gather(*(conn.execute("INCR", "n") for _ in range(500))))
        finally:
            await conn.close()

    assert sorted(run(main())) == list(range(1, 501))


def test_a_flushed_script_is_loaded_again(quiet_redis_url: str) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)
    admin.delete("s")

    async def main() -> list[int]:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            first = await conn.eval_script(SCRIPT, SHA, ["s"], [])
            admin.script_flush()
            return [
                first,
                *await asyncio.gather(
                    *(conn.eval_script(SCRIPT, SHA, ["s"], []) for _ in range(20))
                ),
            ]
        finally:
            await conn.close()

    replies = run(main())
    assert sorted(replies) == list(range(1, 22))  # every call ran exactly once


def test_a_dropped_connection_is_reopened(quiet_redis_url: str) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)

    async def main() -> tuple[int, bytes]:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            await conn.execute("CLIENT", "SETNAME", "pipelined-test")
            killed = admin.client_kill_filter(_type="normal", skipme=True)
            for _ in range(2):  # the first call may still meet the dead socket
                try:
                    return killed, await conn.execute("PING")
                except redis.ConnectionError:
                    continue
            raise AssertionError("no reconnect")
        finally:
            await conn.close()

    killed, reply = run(main())
    assert killed >= 1
    assert reply == b"PONG"


def test_wrong_password_is_a_connection_error(quiet_redis_url: str) -> None:
    url = quiet_redis_url.replace("redis://", "redis://:wrong@")

    async def main() -> None:
        conn = PipelinedRedis(url, 2.0)
        await conn.execute("PING")

    with pytest.raises(redis.ConnectionError):
        run(main())


def test_a_transaction_is_atomic_among_many_concurrent_callers(quiet_redis_url: str) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)
    admin.delete("tx:h", "tx:l", "tx:z", "tx:n")

    async def main() -> None:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:

            async def one(i: int) -> list[object]:
                writes = Commands()
                writes.hset("tx:h", mapping={f"f{i}": i})
                writes.rpush("tx:l", i)
                writes.zadd("tx:z", {f"m{i}": i + 0.5})
                writes.expire("tx:h", 60)
                return await conn.transaction(writes)

            # plain commands interleaved with the transactions on the same connection
            replies = await asyncio.gather(
                *(one(i) for i in range(200)), *(conn.execute("INCR", "tx:n") for _ in range(200))
            )
            for reply in replies[:200]:
                assert isinstance(reply, list) and len(reply) == 4  # EXEC: one reply per command
        finally:
            await conn.close()

    run(main())
    assert admin.hlen("tx:h") == 200 and admin.llen("tx:l") == 200
    assert admin.zscore("tx:z", "m7") == 7.5
    assert int(admin.get("tx:n") or 0) == 200
    assert 0 < admin.ttl("tx:h") <= 60


def test_a_failing_command_fails_the_transaction_and_the_connection_carries_on(
    quiet_redis_url: str,
) -> None:
    admin = redis.Redis.from_url(quiet_redis_url)
    admin.delete("tx:str", "tx:ok")
    admin.set("tx:str", "not a list")

    async def main() -> object:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            writes = Commands()
            writes.rpush("tx:str", "x")  # WRONGTYPE at EXEC
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await conn.transaction(writes)
            return await conn.execute("SET", "tx:ok", "1")
        finally:
            await conn.close()

    assert run(main()) == b"OK"
    assert admin.get("tx:ok") == b"1"
