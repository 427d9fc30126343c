"""kombu's Redis transport, made cheaper per message and safe across Redis restarts and crashes.

Celery selects it with ``broker_transport`` (tasks/app.py); messages, keys and the unacked
bookkeeping are kombu's own (kombu 5.x: we subclass its private Channel/QoS, pinned in
pyproject.toml; tests/tasks check our unacked records against kombu's restore), so workers of
either transport share a broker.

1. kombu builds a new ``redis.Redis`` client for every ack and every delivered message (its
   ``conn_or_acquire``); constructing one costs more CPU than the round trip. Each channel here
   keeps one client over its connection pool (a redis-py client is safe to share between threads).
   A closed channel's client is a connection error, never a crash: a Redis restart closes the
   channel under tasks that still ack (issue 10).
2. An ack removes the message from the unacked hash and index with one round trip per message,
   made by the thread that finished the task. Here the ack frees the prefetch slot at once (as
   kombu's does) and the Redis removal waits for the consumer thread's next poll, which removes
   every tag acked since in one round trip. The pending removals belong to the process, not the
   channel: acks made while Redis is down are flushed by the channel of the next connection.
3. Nothing is taken from a queue without being recorded, atomically. kombu's BRPOP takes a
   message and records it as unacked with a second round trip: a Redis restart or a lost reply
   in between loses the message for good. Here the consumer waits with ``BLMOVE list list RIGHT
   RIGHT``, which takes nothing (it moves the tail element onto the tail of the same list) but
   wakes the moment a message arrives, then takes up to its prefetch credit (at most
   ``FETCH_BATCH``) with one script that pops each message and records it as unacked in kombu's
   format and under this process's consumer id (tasks/liveness.py), atomically. Same round trips
   as BRPOP + record; a batch per round trip under load. The wait covers the first queue of the
   cycle's priority-0 list; the script looks at every list of every queue after each wake-up or
   wait timeout (1 s), so a message elsewhere waits at most that long when the worker is idle.
4. A worker's liveness key and the reaper (tasks/liveness.py) give a SIGKILLed worker's messages
   back within seconds; kombu's visibility timeout stays as the backstop.
5. A fetch whose reply is lost (the connection drops after Redis ran the script: a Redis stop,
   a reset) leaves messages recorded under this live consumer that it never received; the reaper
   would leave them alone until their queue's time limit. So the fetch is sent once, outside
   redis-py's retry (kombu's pool sets none today; redis-py's own default retries, and a retried
   script takes a second batch and hides the loss), and a failed fetch marks the process: before
   its next fetch, on the consumer thread (so no fetch is in progress), the channel reconciles:
   every tag recorded under this consumer that it does not hold (delivered and unacked on its
   channel, running or reserved in Celery, acked with the removal pending, or waiting to be
   given back) goes back at once with the reaper's restore (tasks/reaper.py, one Lua for both).
   We keep the consumer id rather than take a new one per connection: the liveness thread, the
   registry and the running tasks' records all stay as they are, and nothing runs unless a fetch
   failed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from tasks import liveness
from tasks.consumers import ConsumerKeys, consumer_id
from tasks.reaper import Restorer

log = logging.getLogger(__name__)


FETCH_BATCH = 100
# Wait per BLMOVE when consuming several queues: the wait watches one list at a time.
MULTI_QUEUE_WAIT = 0.2
# Pause between attempts while Redis refuses to record what we take (OOM, READONLY, MISCONF).
PAUSE_MS = 1000

# KEYS: the queue's lists, highest priority first, then kombu's unacked hash and index, then
# this consumer's taken hash. ARGV: how many, now. Each popped message is recorded in kombu's
# format, [message, exchange, routing key] under its delivery tag, and under the consumer, before
# the next pop; one that is not a kombu message goes back where it was and ends the batch, for
# kombu's own path to deal with.
_FETCH = """
local n = #KEYS - 3
local unacked, index, taken = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
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
  redis.call('HSET', taken, tag, from)
  out[#out + 1] = raw
end
return out
"""

# Acked tags whose removal from Redis is pending, and tags a closed channel could not give back:
# per process, so that the channel of the next connection finishes the work. Appended by any
# thread, drained by the consumer thread: deque ops are atomic.
_acked: deque[str] = deque()
_to_restore: deque[str] = deque()
# Set when a fetch failed after it may have run (its reply lost); cleared by the reconcile.
_fetch_lost: list[bool] = [False]


def _active_tags(reserved: bool = False) -> set[str]:
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
        acked, active = set(_acked), _active_tags()
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
        active = _active_tags()
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


class Channel(kombu_redis.Channel):
    """A channel that reuses one sync client and takes messages only with their record."""

    QoS = QoS
    delivering_fetched = False
    _waiting = "BLMOVE"
    _refusing = False  # Redis refused our last attempt (logged once per episode)
    _pause_next = False
    liveness_ttl = 10.0
    reap_interval = 3.0
    queue_time_limits: dict[str, float] | None = None  # queue -> its tasks' time limit (s)
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "liveness_ttl",
        "reap_interval",
        "queue_time_limits",
    )

    @cached_property
    def taken_key(self) -> str:
        """This process's hash of the messages it holds (tasks/liveness.py)."""
        return ConsumerKeys(self.unacked_key).taken(consumer_id())

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if not self.global_keyprefix:
            liveness.ensure_running(
                self._liveness_client,
                self.unacked_key,
                self.unacked_index_key,
                float(self.liveness_ttl),
                float(self.reap_interval),
                self.queue_time_limits,
            )
        return super().basic_consume(queue, *args, **kwargs)

    def _liveness_client(self) -> redis.Redis:
        params = self._connparams()
        params.update(socket_timeout=5, socket_connect_timeout=5)
        return redis.Redis(connection_pool=redis.ConnectionPool(**params))

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix:
            super()._brpop_start(timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if len(self.active_queues) > 1:
            timeout = min(timeout or MULTI_QUEUE_WAIT, MULTI_QUEUE_WAIT)
            self._queue_cycle.rotate(queues[0])  # the next wait watches the next queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        if self._pause_next:
            # Redis refuses our writes (OOM, READONLY, MISCONF): wait a second with a read-only
            # blocking command, which every state of Redis serves, then try again
            key = f"{self.unacked_key}:pause"
            self._waiting = "XREAD"
            self.client.connection.send_command("XREAD", "BLOCK", PAUSE_MS, "STREAMS", key, "$")
            return
        key = self._q_for_pri(queues[0], self.priority_steps[0])
        self._waiting = "BLMOVE"
        # a wait that takes nothing: the tail element moves onto the tail of the same list
        self.client.connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        if self.global_keyprefix:
            return bool(super()._brpop_read(**options))
        try:
            try:
                self.client.parse_response(self.client.connection, self._waiting, **options)
            except self.connection_errors:
                # disconnect so the next poll reconnects
                self.client.connection.disconnect()
                raise
            if self._waiting == "XREAD":
                self._pause_next = False
                raise Empty()
            delivered = self._fetch_more()
        except redis.ResponseError as exc:
            if not self._refusing:
                log.warning("Redis refuses to hand out messages (%s); retrying every second", exc)
            self._refusing = self._pause_next = True
            raise Empty() from None
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        if self._refusing:
            log.info("Redis hands out messages again")
            self._refusing = False
        if not delivered:
            raise Empty()
        return True

    def _fetch_more(self) -> int:
        """Deliver up to the remaining prefetch credit from the queues, a batch per round trip."""
        if _fetch_lost[0]:
            self.reconcile()
        delivered = 0
        for queue in self.active_queues:
            while True:
                credit = self.qos.can_consume_max_estimate()
                want = FETCH_BATCH if credit is None else min(credit, FETCH_BATCH)
                if want <= 0:
                    return delivered
                keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
                keys += [self.unacked_key, self.unacked_index_key, self.taken_key]
                raws = self._fetch(keys, [want, time.time()])
                self.delivering_fetched = True
                try:
                    for raw in raws:
                        self.connection._deliver(loads(bytes_to_str(raw)), queue)
                finally:
                    self.delivering_fetched = False
                delivered += len(raws)
                if len(raws) < want:
                    break
        return delivered

    def _fetch(self, keys: list[str], args: list[Any]) -> list[bytes]:
        """Run the fetch script once on a pool connection: never retried (see the top)."""
        script = self._fetch_script
        pool = self._shared_client.connection_pool
        conn = pool.get_connection()
        try:
            try:
                conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return conn.read_response()  # type: ignore[no-any-return]
            except redis.exceptions.NoScriptError:  # nothing ran: send the script itself
                conn.send_command("EVAL", script.script, len(keys), *keys, *args)
                return conn.read_response()  # type: ignore[no-any-return]
        except redis.ResponseError:
            raise  # Redis answered: the script ran to its end or not at all
        except BaseException:
            # the script may have run with its reply lost: reconcile before the next fetch
            _fetch_lost[0] = True
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def reconcile(self) -> int:
        """Give back what this consumer's record holds but the process never received."""
        # Held tags are read around the round trip so that a tag moving between sets is seen in
        # one or the other: an acked tag leaves kombu's delivered set only at this thread's next
        # poll, and a task that just finished (Celery: task_ready, then the ack) is in _acked by
        # the time the reply is back. A miss would only re-deliver a finished job: dropped.
        held = _active_tags(reserved=True) | {str(tag) for tag in tuple(self.qos._delivered)}
        recorded: dict[Any, Any] = self._shared_client.hgetall(self.taken_key)
        held |= set(_acked) | set(_to_restore)
        lost = {tag: source for tag, source in recorded.items() if tag.decode() not in held}
        restored = self._restorer.restore(self.taken_key, lost) if lost else 0
        _fetch_lost[0] = False
        if restored:
            log.warning(
                "a fetch's reply was lost: %d messages taken but never received given back",
                restored,
            )
        return restored

    @cached_property
    def _restorer(self) -> Restorer:
        return Restorer(self._shared_client, self.unacked_key, self.unacked_index_key)

    @cached_property
    def _fetch_script(self) -> Any:
        return self._shared_client.register_script(_FETCH)

    @cached_property
    def _shared_client(self) -> redis.Redis:
        if self.connection is None or self.connection.client is None:
            # closed under us (Redis went away): a connection error, which Celery rides through
            raise redis.ConnectionError("the broker connection is closed")
        return self._create_client()  # type: ignore[no-any-return]

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._shared_client

    def _disconnect_pools(self) -> None:
        # the shared client and its script point at the pool being dropped
        self.__dict__.pop("_shared_client", None)
        self.__dict__.pop("_fetch_script", None)
        self.__dict__.pop("_restorer", None)
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
