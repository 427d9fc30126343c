"""The broker channel's QoS: prefetch slots freed at once, acks removed from Redis in batches.

A subclass of kombu's private Redis ``QoS`` (kombu 5.x, major pinned in pyproject.toml; why we
lean on it and which tests guard it: the top of tasks/broker.py).

An ack removes the message from the unacked hash and index with one round trip per message, made
by the thread that finished the task. Here the ack frees the prefetch slot at once (as kombu's
does) and the Redis removal waits for the consumer thread's next poll, which removes every tag
acked since in one round trip. The pending removals belong to the process, not the channel: acks
made while Redis is down are flushed by the channel of the next connection. A closed channel's
unacked messages go back to their queue, or once Redis answers again; a running task's message
stays this process's.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

# the transport's one logger, as before the split: the same name whichever of its modules logs
log = logging.getLogger("tasks.broker")

# Acked tags whose removal from Redis is pending, and tags a closed channel could not give back:
# per process, so that the channel of the next connection finishes the work. Appended by any
# thread, drained by the consumer thread: deque ops are atomic.
_acked: deque[str] = deque()
_to_restore: deque[str] = deque()


def active_tags(reserved: bool = False) -> set[str]:
    """Delivery tags of the tasks this process is running now (and, if asked, has reserved)."""
    from celery.worker import state

    requests = tuple(state.active_requests)
    if reserved:
        requests += tuple(state.reserved_requests)
    return {
        str(tag)
        for request in requests
        if (tag := getattr(getattr(request, "message", None), "delivery_tag", None))
    }


def pending_tags() -> set[str]:
    """Tags this process still holds though no channel does: acked or to be given back."""
    return set(_acked) | set(_to_restore)


class QoS(kombu_redis.QoS):
    """Acks recorded at once, removed from Redis in batches by the consumer thread."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.delivering_fetched:
            # already recorded as unacked by the fetch script: only kombu's in-memory part
            super(kombu_redis.QoS, self).append(message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        _acked.append(delivery_tag)
        full = not super().can_consume()
        # kombu's in-memory ack (virtual.QoS): frees the prefetch slot
        super(kombu_redis.QoS, self).ack(delivery_tag)
        connection = self.channel.connection
        hub = connection.hub if connection is not None else None
        if full and hub is not None:
            # With every slot taken the consumer stops polling the queue and sleeps until its
            # next timer (up to seconds); wake it so the freed slot takes a message now.
            hub.call_soon(_nothing)

    def can_consume(self) -> bool:
        # asked by the consumer thread before every poll: the moment to flush
        try:
            self.flush_acks()
            self.flush_restores()
        except redis.RedisError as exc:
            # kept for the next poll; a lost connection also fails the consumer's wait, which
            # reconnects, so this only logs
            log.warning("could not update the unacked messages in Redis yet: %s", exc)
        return bool(super().can_consume())

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        return pipe.hdel(self.channel.taken_key, delivery_tag)

    def flush_acks(self) -> None:
        """Remove every tag acked so far from the unacked hash and index, in one round trip."""
        tags: list[str] = []
        while True:
            try:
                tags.append(_acked.popleft())
            except IndexError:
                break
        if not tags:
            return
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                pipe.zrem(self.unacked_index_key, *tags)
                pipe.hdel(self.unacked_key, *tags)
                pipe.hdel(self.channel.taken_key, *tags)
                pipe.execute()
        except redis.RedisError:
            _acked.extendleft(reversed(tags))
            raise

    def flush_restores(self) -> None:
        """Give back what a closed channel could not: tags neither acked nor running by now."""
        if not _to_restore:
            return
        keep: list[str] = []
        acked, active = set(_acked), active_tags()
        with self.channel.conn_or_acquire() as client:
            while _to_restore:
                tag = _to_restore.popleft()
                if tag in acked:
                    continue
                if tag in active:
                    keep.append(tag)  # still running here: its ack removes it
                    continue
                try:
                    self.restore_by_tag(tag, client=client)
                except redis.RedisError:
                    _to_restore.appendleft(tag)
                    _to_restore.extend(keep)
                    raise
        _to_restore.extend(keep)

    def restore_unacked(self, client: Any = None) -> Any:
        self.flush_acks()
        return super().restore_unacked(client)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)
        except redis.RedisError:
            # Redis away (or the channel closed under the task): given back once it answers
            _to_restore.append(delivery_tag)
            super(kombu_redis.QoS, self).ack(delivery_tag)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # The channel closes at shutdown and when Redis goes away. Acked messages must not come
        # back after the visibility timeout; a running task's message stays this process's
        # (its ack removes it; if the process dies, the reaper gives it back); the rest go back
        # to the queue now, or once Redis answers again (flush_restores).
        active = active_tags()
        for tag in [t for t in self._delivered if t in active]:
            self._delivered.pop(tag, None)
        pending = [str(tag) for tag in self._delivered if tag not in self._dirty]
        try:
            self.flush_acks()
            return super().restore_unacked_once(stderr)
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "Redis unavailable while closing the channel (%s): its %d unacked messages go "
                "back once it answers",
                exc,
                len(pending),
            )
            _to_restore.extend(pending)
            self._delivered.clear()
            self._delivered.restored = True  # type: ignore[attr-defined]
            return None


def _nothing() -> None:
    """A callback whose only effect is to wake the consumer's hub."""
