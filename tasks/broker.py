"""kombu's Redis transport, with two per-message costs taken off the worker's hot path.

Celery selects it with ``broker_transport`` (tasks/app.py); messages, keys and the unacked
bookkeeping are kombu's own, so workers of either transport share a broker.

1. kombu builds a new ``redis.Redis`` client for every ack and every delivered message (its
   ``conn_or_acquire``); constructing one costs more CPU than the round trip. Each channel here
   keeps one client over its connection pool (a redis-py client is safe to share between threads).
2. An ack removes the message from the unacked hash and index with one round trip per message,
   made by the thread that finished the task. Here the ack frees the prefetch slot at once (as
   kombu's does) and the Redis removal waits for the consumer thread's next poll, which removes
   every tag acked since in one round trip. If the process dies in between, those messages are
   restored after the visibility timeout like any unacked message, and the job runtime drops a
   message whose job is already final (tasks/runtime.py): at-least-once either way.
3. kombu takes one message per BRPOP and records it as unacked with a second round trip, so a
   worker refilling hundreds of free slots at once spends two round trips per message. Here, once
   BRPOP has delivered a message, the consumer takes up to its remaining prefetch credit (at most
   ``FETCH_BATCH``) from the same queue with one script that pops each message and records it as
   unacked exactly as kombu does, atomically: nothing is ever popped without being recorded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)


FETCH_BATCH = 100

# KEYS: the queue's lists, highest priority first, then kombu's unacked hash and index.
# ARGV: how many, now. Each popped message is recorded in kombu's format, [message, exchange,
# routing key] under its delivery tag, before the next pop; one that is not a kombu message goes
# back where it was and ends the batch, for kombu's own path to deal with.
_FETCH = """
local n = #KEYS - 2
local unacked, index = KEYS[n + 1], KEYS[n + 2]
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw, from
  for i = 1, n do
    raw = redis.call('RPOP', KEYS[i])
    if raw then from = KEYS[i]; break end
  end
  if not raw then break end
  local ok, msg = pcall(cjson.decode, raw)
  local props = ok and type(msg) == 'table' and msg['properties']
  local info = props and props['delivery_info']
  local tag = props and props['delivery_tag']
  if type(info) ~= 'table' or type(tag) ~= 'string' then
    redis.call('RPUSH', from, raw)
    break
  end
  redis.call('ZADD', index, ARGV[2], tag)
  redis.call('HSET', unacked, tag,
    '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ',' ..
    cjson.encode(info['routing_key']) .. ']')
  out[#out + 1] = raw
end
return out
"""


class QoS(kombu_redis.QoS):
    """Acks recorded at once, removed from Redis in batches by the consumer thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # appended by any thread, drained by the consumer thread: deque ops are atomic
        self._acked: deque[str] = deque()

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.delivering_fetched:
            # already recorded as unacked by the fetch script: only kombu's in-memory part
            super(kombu_redis.QoS, self).append(message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self._acked.append(delivery_tag)
        full = not super().can_consume()
        # kombu's in-memory ack (virtual.QoS): frees the prefetch slot
        super(kombu_redis.QoS, self).ack(delivery_tag)
        hub = self.channel.connection.hub
        if full and hub is not None:
            # With every slot taken the consumer stops polling the queue and sleeps until its
            # next timer (up to seconds); wake it so the freed slot takes a message now.
            hub.call_soon(_nothing)

    def can_consume(self) -> bool:
        # asked by the consumer thread before every poll: the moment to flush
        try:
            self.flush_acks()
        except redis.RedisError as exc:
            # kept for the next poll; a lost connection also fails the consumer's BRPOP, which
            # reconnects, so this only logs
            log.warning("could not remove acked messages from Redis yet: %s", exc)
        return bool(super().can_consume())

    def flush_acks(self) -> None:
        """Remove every tag acked so far from the unacked hash and index, in one round trip."""
        tags: list[str] = []
        while True:
            try:
                tags.append(self._acked.popleft())
            except IndexError:
                break
        if not tags:
            return
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                pipe.zrem(self.unacked_index_key, *tags)
                pipe.hdel(self.unacked_key, *tags)
                pipe.execute()
        except redis.RedisError:
            self._acked.extendleft(reversed(tags))
            raise

    def restore_unacked(self, client: Any = None) -> Any:
        self.flush_acks()
        return super().restore_unacked(client)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # at shutdown: acked messages must not be left to come back after the visibility timeout
        try:
            self.flush_acks()
        except redis.RedisError:
            pass
        return super().restore_unacked_once(stderr)


class Channel(kombu_redis.Channel):
    """A channel that reuses one sync client and tops up its prefetch in batches."""

    QoS = QoS
    delivering_fetched = False

    def _brpop_read(self, **options: Any) -> bool:
        delivered: bool = super()._brpop_read(**options)
        if delivered and not self.global_keyprefix:
            self._fetch_more()
        return delivered

    def _fetch_more(self) -> None:
        """Deliver up to the remaining prefetch credit from the queues, a batch per round trip."""
        for queue in self.active_queues:
            while True:
                credit = self.qos.can_consume_max_estimate()
                want = FETCH_BATCH if credit is None else min(credit, FETCH_BATCH)
                if want <= 0:
                    return
                keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
                keys += [self.unacked_key, self.unacked_index_key]
                raws = self._fetch_script(keys=keys, args=[want, time.time()])
                self.delivering_fetched = True
                try:
                    for raw in raws:
                        self.connection._deliver(loads(bytes_to_str(raw)), queue)
                finally:
                    self.delivering_fetched = False
                if len(raws) < want:
                    break

    @cached_property
    def _fetch_script(self) -> Any:
        return self._shared_client.register_script(_FETCH)

    @cached_property
    def _shared_client(self) -> redis.Redis:
        return self._create_client()  # type: ignore[no-any-return]

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._shared_client

    def _disconnect_pools(self) -> None:
        # the shared client points at the pool being dropped
        self.__dict__.pop("_shared_client", None)
        super()._disconnect_pools()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
    hub: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self.hub = loop  # the consumer's kombu Hub, woken by acks from other threads
        super().register_with_event_loop(connection, loop)


def _nothing() -> None:
    """A callback whose only effect is to wake the consumer's hub."""
