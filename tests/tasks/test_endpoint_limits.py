"""The endpoint gate and outcome scripts on a real Redis: what goes, what waits, and how long."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from core.statuses import DeliveryStatus
from tasks import endpoint_limits
from tasks.deliveries import add_delivery
from tasks.endpoint_limits import Gate, gate
from tasks.endpoints import offer, parse
from tasks.keys import Keys
from tasks.pipelined import Commands, PipelinedRedis
from tasks.queues import CALLBACKS

LEASE, WAIT, PROBE = 60.0, 1.0, 30.0


@pytest.fixture
def env(quiet_redis_url: str) -> Iterator[tuple[redis.Redis, Keys, str]]:
    client = redis.Redis.from_url(quiet_redis_url)
    keys = Keys(f"limits-{uuid.uuid4().hex[:6]}:")
    yield client, keys, quiet_redis_url
    for key in client.scan_iter(f"{keys.prefix}*"):
        client.delete(key)
    client.delete(CALLBACKS)
    client.close()


def make_endpoint(client: redis.Redis, keys: Keys, **fields: Any) -> str:
    """Write an endpoint's hash as the API does (tasks/endpoints.py fields)."""
    endpoint_id = f"ep_{uuid.uuid4().hex}"
    record = {
        "id": endpoint_id,
        "url": "http://127.0.0.1:9/hook",
        "event_types": '["*"]',
        "sources": "[]",
        "status": "enabled",
        "secret": "whsec_dGVzdA==",
        "max_in_flight": "32",
        "rate_limit": "",
        "ordered": "",
        "failure_streak": "0",
        "failing_since": "",
    }
    record.update({k: str(v) for k, v in fields.items()})
    client.hset(keys.endpoint(endpoint_id), mapping=record)
    client.zadd(keys.endpoints, {endpoint_id: 1.0})
    return endpoint_id


def deliveries(client: redis.Redis, keys: Keys, endpoint_id: str, n: int) -> list[str]:
    """``n`` deliveries for the endpoint, offered as fan-out does, in one transaction."""
    endpoint = parse(client.hgetall(keys.endpoint(endpoint_id)))
    ids: list[str] = []
    with client.pipeline(transaction=True) as pipe:
        for i in range(n):
            ids += offer(
                pipe,
                keys,
                [endpoint],
                event_type="invoice.paid",
                source="test",
                body={"type": "invoice.paid", "data": {"n": i}},
                parent=f"event:{i}",
                owner="",
                max_attempts=3,
                ttl=600,
            )
        pipe.execute()
    return ids


def gate_all(url: str, keys: Keys, ids: list[str], **kw: float) -> list[Gate | None]:
    """Run the gate on each id in turn (one connection, as a worker does)."""

    async def run() -> list[Gate | None]:
        conn = PipelinedRedis(url, 5.0)
        try:
            args = {"lease": LEASE, "wait": WAIT, "probe_interval": PROBE, **kw}
            return [await gate(conn, keys, i, **args) for i in ids]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_endpoint_keys_in_the_scripts_are_the_keys_module_s() -> None:
    keys = Keys("p:")
    assert keys.endpoint("e") + ":inflight" == keys.endpoint_limit("e", "inflight")
    assert keys.endpoint("") + "e" == keys.endpoint("e")


def test_a_plain_delivery_is_claimed_as_before(env: tuple[redis.Redis, Keys, str]) -> None:
    client, keys, url = env
    with client.pipeline() as pipe:
        plain = add_delivery(
            pipe, keys, url="http://x", body={}, parent="job:1", owner="", max_attempts=3, ttl=60
        )
        pipe.execute()
    [g] = gate_all(url, keys, [plain])
    assert g is not None and g.verdict == "go" and g.endpoint is None
    assert g.record is not None and g.record["attempts"] == 1
    assert g.record["status"] == DeliveryStatus.DELIVERING
    client.hset(keys.delivery(plain), "status", "delivered")
    assert gate_all(url, keys, [plain]) == [None]  # final: dropped


def test_max_in_flight_holds_and_a_lease_frees_its_slot(
    env: tuple[redis.Redis, Keys, str],
) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys, max_in_flight=2)
    ids = deliveries(client, keys, endpoint_id, 3)
    first = gate_all(url, keys, ids)
    assert [g.verdict if g else None for g in first] == ["go", "go", "wait"]
    waiting = first[2]
    assert waiting is not None and waiting.reason == "busy"
    assert client.hget(keys.delivery(ids[2]), "attempts") == b"0"  # not claimed, not counted
    # a re-delivered message of one in flight waits for its lease too
    [again] = gate_all(url, keys, [ids[0]])
    assert again is not None and again.reason == "in_flight"
    # leases that end (a killed worker) free their slots
    client.zadd(keys.endpoint_limit(endpoint_id, "inflight"), {ids[0]: 1, ids[1]: 1}, xx=True)
    [g] = gate_all(url, keys, [ids[2]])
    assert g is not None and g.verdict == "go" and g.endpoint is not None
    assert g.endpoint.id == endpoint_id and g.record is not None and g.record["attempts"] == 1


def test_the_rate_allows_a_burst_then_hands_out_spaced_slots(
    env: tuple[redis.Redis, Keys, str],
) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys, rate_limit=5)
    ids = deliveries(client, keys, endpoint_id, 20)
    seen = [g for g in gate_all(url, keys, ids) if g is not None]
    went = [g for g in seen if g.verdict == "go"]
    waits = sorted(g.due for g in seen if g.verdict == "wait")
    assert len(went) == 5 and len(waits) == 15  # burst of at most the rate
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(abs(gap - 0.2) < 1e-3 for gap in gaps)  # one slot per 1/rate, none shared
    # the 20th may go no sooner than 3 s on: at most rate + burst - 1 in any second
    assert 2.9 < waits[-1] - waits[0] + 0.2 < 3.1


def test_an_ordered_endpoint_lets_only_its_head_go(env: tuple[redis.Redis, Keys, str]) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys, ordered=1)
    ids = deliveries(client, keys, endpoint_id, 3)
    sequence = client.zrange(keys.endpoint_limit(endpoint_id, "sequence"), 0, -1)
    assert [i.decode() for i in sequence] == ids  # acceptance order
    verdicts = [g.verdict if g else None for g in gate_all(url, keys, list(reversed(ids)))]
    assert verdicts == ["wait", "wait", "go"]
    # a head that ended (or whose record is gone) without leaving the line does not block it
    client.hset(keys.delivery(ids[0]), "status", "dead")
    client.delete(keys.delivery(ids[1]))
    [g] = gate_all(url, keys, [ids[2]])
    assert g is not None and g.verdict == "go"
    assert client.zrange(keys.endpoint_limit(endpoint_id, "sequence"), 0, -1) == [ids[2].encode()]


def test_a_disabled_endpoint_holds_and_release_sends_in_order(
    env: tuple[redis.Redis, Keys, str],
) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys)
    ids = deliveries(client, keys, endpoint_id, 3)  # offered while it was enabled
    client.hset(keys.endpoint(endpoint_id), "status", "disabled")
    client.delete(CALLBACKS)  # their first messages, as a worker would have taken them
    assert [g.verdict if g else None for g in gate_all(url, keys, ids)] == ["held"] * 3
    assert client.zcard(keys.endpoint_limit(endpoint_id, "held")) == 3
    assert client.hget(keys.delivery(ids[0]), "status") == b"pending"  # not dead-lettered

    async def release() -> int:
        api = AsyncRedis.from_url(url)
        try:
            return await endpoint_limits.release_held(api, keys, endpoint_id)
        finally:
            await api.aclose()

    assert asyncio.run(release()) == 3
    assert asyncio.run(release()) == 0  # each is sent once
    queued = [json.loads(m)["headers"]["id"] for m in client.lrange(CALLBACKS, 0, -1)]
    assert list(reversed(queued)) == ids  # LPUSH, consumed from the right: oldest first


def run_outcomes(
    url: str, keys: Keys, endpoint_id: str, results: list[str], **kw: Any
) -> list[Any]:
    """Run the outcome script for one attempt per result; the script's answers."""

    async def run() -> list[Any]:
        conn = PipelinedRedis(url, 5.0)
        answers = []
        try:
            for result in results:
                writes = Commands()
                args: dict[str, Any] = {
                    "final": False,
                    "now_iso": "2026-01-01T00:00:00Z",
                    "pause_after": 3,
                    "disable_after": 3600.0,
                    "reason": "",
                    "probe_interval": 30.0,
                    "disabled_event": None,
                    **kw,
                }
                endpoint_limits.outcome(writes, keys, endpoint_id, "msg_x", result=result, **args)
                answers.append((await conn.transaction(writes))[-1])
        finally:
            await conn.close()
        return answers

    return asyncio.run(run())


def test_failures_in_a_row_pause_and_a_success_resumes(
    env: tuple[redis.Redis, Keys, str],
) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys)
    answers = run_outcomes(url, keys, endpoint_id, ["fail", "fail", "fail"])
    assert answers == [b"enabled", b"enabled", b"paused"]
    assert client.hget(keys.endpoint(endpoint_id), "failure_streak") == b"3"
    # while paused, the probe is taken: deliveries wait for the next probe time
    [one] = deliveries(client, keys, endpoint_id, 1)
    [g] = gate_all(url, keys, [one])
    assert g is not None and g.reason == "paused" and 25 < g.due - client.time()[0] < 31
    assert run_outcomes(url, keys, endpoint_id, ["ok"]) == [b"resumed"]
    fields = client.hgetall(keys.endpoint(endpoint_id))
    assert fields[b"status"] == b"enabled" and fields[b"failure_streak"] == b"0"


def test_a_410_disables_at_once_with_its_event_in_the_same_script(
    env: tuple[redis.Redis, Keys, str],
) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys)
    watcher = make_endpoint(client, keys, event_types='["endpoint.*"]')
    event = Commands()
    [delivery_id] = offer(
        event,
        keys,
        [parse(client.hgetall(keys.endpoint(watcher)))],
        event_type="endpoint.disabled",
        source="gateway",
        body={"type": "endpoint.disabled", "data": {"id": endpoint_id}},
        parent=f"endpoint:{endpoint_id}",
        owner="",
        max_attempts=3,
        ttl=600,
    )
    reason = "410 Gone from 127.0.0.1"
    answers = run_outcomes(url, keys, endpoint_id, ["gone"], reason=reason, disabled_event=event)
    assert answers == [b"disabled"]
    fields = client.hgetall(keys.endpoint(endpoint_id))
    assert fields[b"status"] == b"disabled" and fields[b"disabled_reason"] == reason.encode()
    assert client.hget(keys.delivery(delivery_id), "endpoint_id") == watcher.encode()
    assert client.hget(keys.counters, "endpoint.disabled") == b"1"
    # a failure that cannot disable (no event prepared) leaves it as it is
    other = make_endpoint(client, keys)
    assert run_outcomes(url, keys, other, ["gone"]) == [b"enabled"]


def test_continuous_failure_past_the_limit_disables(env: tuple[redis.Redis, Keys, str]) -> None:
    client, keys, url = env
    endpoint_id = make_endpoint(client, keys, failing_since=1.0)  # failing since 1970
    fields = {"failing_since": "1.0"}
    assert endpoint_limits.may_disable(fields, "fail", 3600)
    assert not endpoint_limits.may_disable({"failing_since": ""}, "fail", 3600)
    reason = endpoint_limits.disable_reason("http://h/x", fields, "fail")
    answers = run_outcomes(
        url, keys, endpoint_id, ["fail"], reason=reason, disabled_event=Commands()
    )
    assert answers == [b"disabled"]
    assert b"failing continuously since 1970" in client.hget(
        keys.endpoint(endpoint_id), "disabled_reason"
    )
