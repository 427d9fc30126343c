"""The claim scripts: generated from the status vocabularies, and what they do to a real record."""

from __future__ import annotations

import asyncio
import re
from enum import StrEnum

import pytest
import redis

from core.statuses import (
    DELIVERY_FINAL,
    EVENT_FINAL,
    JOB_FINAL,
    DeliveryStatus,
    EventStatus,
    JobStatus,
)
from tasks.claims import (
    DELIVERY_CLAIM,
    EVENT_CLAIM,
    JOB_CLAIM,
    Script,
    claim,
    claim_sync,
    lua_is_any,
    lua_string,
)
from tasks.dead_letters import _REPLAY
from tasks.pipelined import PipelinedRedis

CLAIMS = [
    (JOB_CLAIM, JobStatus, JOB_FINAL, JobStatus.RUNNING),
    (DELIVERY_CLAIM, DeliveryStatus, DELIVERY_FINAL, DeliveryStatus.DELIVERING),
    (EVENT_CLAIM, EventStatus, EVENT_FINAL, EventStatus.PROCESSING),
]


@pytest.mark.parametrize(("script", "machine", "final", "running"), CLAIMS)
def test_each_claim_refuses_exactly_its_final_statuses(
    script: Script, machine: type[StrEnum], final: frozenset[str], running: str
) -> None:
    refused = re.findall(r"status == '([a-z_]+)'", script.text)
    assert sorted(refused) == sorted(final)
    assert f"'status', '{running}'" in script.text
    assert not set(re.findall(r"'([a-z]+)'", script.text)) & (set(machine) - final - {running})


def test_the_dead_letter_replay_restarts_with_the_vocabulary_s_words() -> None:
    assert f"'status', '{JobStatus.QUEUED}'" in _REPLAY
    assert f"'status', '{DeliveryStatus.PENDING}'" in _REPLAY


def test_lua_literals_are_plain_words_only() -> None:
    assert lua_is_any("s", {"b", "a"}) == "s == 'a' or s == 'b'"  # same text in every process
    with pytest.raises(ValueError, match="plain word"):
        lua_string("x' or true or '")


@pytest.mark.parametrize(("script", "machine", "final", "running"), CLAIMS)
def test_a_claim_starts_an_attempt_unless_the_record_is_final(
    quiet_redis: redis.Redis,
    script: Script,
    machine: type[StrEnum],
    final: frozenset[str],
    running: str,
) -> None:
    for status in machine:
        key = f"claims-test:{machine.__name__}:{status}"
        quiet_redis.delete(key)
        quiet_redis.hset(key, mapping={"status": status, "attempts": 2, "error": "last time"})
        job = ["now", 60, "claims-test:by:", "an-id"]  # with the index's prefix and the job's id
        args = {JOB_CLAIM: job, DELIVERY_CLAIM: [], EVENT_CLAIM: ["now", 60]}[script]
        channel = "claims-test:changes" if script is JOB_CLAIM else None
        index = "claims-test:all" if script is JOB_CLAIM else None
        fields = claim_sync(quiet_redis, script, key, *args, channel=channel, index=index)
        after = quiet_redis.hgetall(key)
        if status in final:
            assert fields is None, status
            assert after[b"status"] == str(status).encode()
            assert after[b"attempts"] == b"2"
            continue
        assert fields == after, status
        assert after[b"status"] == running.encode()
        assert after[b"attempts"] == b"3"
        if args:
            assert after[b"started_at"] == b"now"
            assert 0 < quiet_redis.ttl(key) <= 60
        else:
            assert quiet_redis.ttl(key) == -1
        # a job's last error goes when it runs again; other records keep theirs
        assert after[b"error"] == (b"" if script is JOB_CLAIM else b"last time")


def test_a_claim_of_a_missing_record_is_none(
    quiet_redis: redis.Redis, quiet_redis_url: str
) -> None:
    quiet_redis.delete("claims-test:none")
    assert claim_sync(quiet_redis, EVENT_CLAIM, "claims-test:none", "now", 60) is None

    async def on_the_loop() -> object:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            return await claim(conn, DELIVERY_CLAIM, "claims-test:none")
        finally:
            await conn.close()

    assert asyncio.run(on_the_loop()) is None


def test_the_loop_claim_goes_by_sha_and_loads_a_flushed_script(
    quiet_redis: redis.Redis, quiet_redis_url: str
) -> None:
    key = "claims-test:flushed"
    quiet_redis.delete(key)
    quiet_redis.hset(key, mapping={"status": "queued", "attempts": 0})
    quiet_redis.script_flush()

    async def on_the_loop() -> object:
        conn = PipelinedRedis(quiet_redis_url, 2.0)
        try:
            return await claim(
                conn,
                JOB_CLAIM,
                key,
                "now",
                60,
                "claims-test:by:",
                "flushed",
                channel="claims-test:changes",
                index="claims-test:all",
            )
        finally:
            await conn.close()

    fields = asyncio.run(on_the_loop())
    assert isinstance(fields, dict)
    assert fields[b"status"] == b"running"
    assert quiet_redis.script_exists(JOB_CLAIM.sha) == [True]
