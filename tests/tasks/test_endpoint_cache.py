"""A worker's endpoint cache and the offer's endpoint list, against real Redis."""

from __future__ import annotations

import json

import redis

from tasks.endpoints import ENDPOINT_DELIVERIES_KEPT, EndpointCache, bump_version, load_all, offer
from tasks.keys import Keys
from tasks.pipelined import Commands


def add(r: redis.Redis, keys: Keys, endpoint_id: str, types: list[str]) -> None:
    record = {
        "id": endpoint_id,
        "url": f"http://127.0.0.1:9/{endpoint_id}",
        "event_types": json.dumps(types),
        "status": "enabled",
        "secret": "whsec_x",
    }
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.endpoint(endpoint_id), mapping=record)  # type: ignore[arg-type]
        pipe.zadd(keys.endpoints, {endpoint_id: 1})
        bump_version(pipe, keys)
        pipe.execute()


def test_the_cache_loads_again_only_when_the_version_moved(
    quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix + "cache:")
    cache = EndpointCache()
    loads: list[int] = []

    def current() -> tuple[str, ...]:
        def load() -> list:  # type: ignore[type-arg]
            loads.append(1)
            return load_all(quiet_redis, keys)

        version = quiet_redis.get(keys.endpoints_version)
        return tuple(e.id for e in cache.given(version, load))

    assert current() == () and len(loads) == 1  # nothing on record yet: loaded once all the same
    assert current() == () and len(loads) == 1
    add(quiet_redis, keys, "ep_a", ["*"])
    assert current() == ("ep_a",) and len(loads) == 2
    assert current() == ("ep_a",) and len(loads) == 2
    add(quiet_redis, keys, "ep_b", ["x.*"])
    assert set(current()) == {"ep_a", "ep_b"} and len(loads) == 3


def test_offer_lists_each_delivery_under_its_endpoint_in_the_same_transaction(
    quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix + "offer:")
    add(quiet_redis, keys, "ep_all", ["*"])
    add(quiet_redis, keys, "ep_x", ["x.*"])
    writes = Commands()

    ids = offer(
        writes,
        keys,
        load_all(quiet_redis, keys),
        event_type="y.created",
        source="s",
        body={"type": "y.created"},
        parent="event:e1",
        owner="o",
        max_attempts=3,
        ttl=60,
    )
    assert quiet_redis.zcard(keys.endpoint_deliveries("ep_all")) == 0  # nothing before EXEC
    with quiet_redis.pipeline(transaction=True) as pipe:
        for command in writes.items:
            pipe.execute_command(*command)
        pipe.execute()

    [delivery_id] = ids
    assert quiet_redis.zrange(keys.endpoint_deliveries("ep_all"), 0, -1) == [delivery_id.encode()]
    assert quiet_redis.zcard(keys.endpoint_deliveries("ep_x")) == 0
    assert quiet_redis.hget(keys.delivery(delivery_id), "endpoint_id") == b"ep_all"
    assert ENDPOINT_DELIVERIES_KEPT == 10_000  # the README and the API's view say so
