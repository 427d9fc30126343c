"""A consumer gives back what it took but never received, and nothing it holds.

tasks/broker_fetch.py, through the channel of tasks/broker.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from gateway.embedded import EmbeddedRedis
from tasks import liveness
from tasks.queues import DEFAULT
from tests.tasks.test_contracts import push_adds, take_with_our_transport


@pytest.fixture
def url() -> Iterator[str]:
    server = EmbeddedRedis().start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        liveness.stop()
        server.stop()


def test_reconcile_gives_back_only_what_the_process_does_not_hold(url: str) -> None:
    push_adds(url, 4)
    connection, channel = take_with_our_transport(url, 2)
    r = redis.Redis.from_url(url)
    try:
        held, acked = list(channel.qos._delivered)
        channel.qos._delivered[acked].ack()  # its removal from Redis waits for the next poll
        channel.qos._flush()  # a poll forgot it in memory, but could not remove it from Redis
        # a fetch that ran in Redis but whose reply never arrived: recorded, never delivered
        keys = [channel._q_for_pri(DEFAULT, pri) for pri in channel.priority_steps]
        keys += [channel.unacked_key, channel.unacked_index_key, channel.taken_key]
        [raw] = channel._fetch(keys, [1, time.time()])
        lost = json.loads(raw)["properties"]["delivery_tag"]
        assert r.hlen(channel.taken_key) == 3 and r.llen(DEFAULT) == 1

        assert channel.reconcile() == 1
        assert set(r.hkeys(channel.taken_key)) == {held.encode(), acked.encode()}
        assert set(r.hkeys("unacked")) == {held.encode(), acked.encode()}
        # back at the front of its queue (kombu pops from the right), marked redelivered
        back = json.loads(r.lindex(DEFAULT, -1) or b"{}")
        assert back["properties"]["delivery_tag"] == lost
        assert back["properties"]["delivery_info"]["redelivered"] is True
        assert channel.reconcile() == 0  # and it is given back only once
    finally:
        r.close()
        connection.close()  # type: ignore[no-untyped-call]
