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
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """Acks recorded at once, removed from Redis in batches by the consumer thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # appended by any thread, drained by the consumer thread: deque ops are atomic
        self._acked: deque[str] = deque()

    def ack(self, delivery_tag: str) -> None:
        self._acked.append(delivery_tag)
        # kombu's in-memory ack (virtual.QoS): frees the prefetch slot
        super(kombu_redis.QoS, self).ack(delivery_tag)

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
    """A channel that reuses one sync client instead of building one per call."""

    QoS = QoS

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
