"""kombu's Redis transport, made cheaper per message and safe across Redis restarts and crashes.

Celery selects it with ``broker_transport`` (tasks/app.py). We subclass kombu's private Channel
and QoS (here, tasks/broker_qos.py and tasks/broker_fetch.py) rather than replace the transport,
so that messages, keys and the unacked bookkeeping stay kombu's own: workers of either transport
share a broker, and kombu's restore and visibility timeout keep working. kombu's major (and
Celery's) is pinned in pyproject.toml; the contract tests say whether an upgrade still holds:
tests/tasks/test_contracts.py (our unacked records restored by kombu's own restore and run by a
stock worker), tests/tasks/test_reconcile.py, tests/e2e/test_lost_fetch_reply.py,
tests/e2e/test_redis_restart.py and tests/e2e/test_loop_pool.py.

1. kombu builds a new ``redis.Redis`` client for every ack and every delivered message (its
   ``conn_or_acquire``); constructing one costs more CPU than the round trip. Each channel here
   keeps one client over its connection pool (a redis-py client is safe to share between threads).
   A closed channel's client is a connection error, never a crash: a Redis restart closes the
   channel under tasks that still ack (issue 10).
2. An ack frees its prefetch slot at once and leaves Redis in a batch at the consumer's next poll
   (tasks/broker_qos.py).
3. Nothing is taken from a queue without being recorded, atomically (tasks/broker_fetch.py). The
   consumer waits with ``BLMOVE list list RIGHT RIGHT``, which takes nothing (it moves the tail
   element onto the tail of the same list) but wakes the moment a message arrives, then takes up
   to its prefetch credit (at most ``FETCH_BATCH``) with one script that pops and records. Same
   round trips as BRPOP + record; a batch per round trip under load. The wait covers the first
   queue of the cycle's priority-0 list; the script looks at every list of every queue after each
   wake-up or wait timeout (1 s), so a message elsewhere waits at most that long when the worker is
   idle. While Redis refuses to record (OOM, READONLY, MISCONF) the wait is a read-only blocking
   XREAD of a second, which every state of Redis serves.
4. A worker's liveness key and the reaper (tasks/liveness.py) give a SIGKILLed worker's messages
   back within seconds; kombu's visibility timeout stays as the backstop.
5. A fetch whose reply is lost is never retried, and marks the process: before its next fetch the
   channel gives back what its consumer's record holds but it never received
   (tasks/broker_fetch.py).
"""

from __future__ import annotations

import logging
import time
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
from tasks.broker_fetch import FETCH_SCRIPT, fetch_once, fetch_was_lost, reconcile
from tasks.broker_qos import QoS
from tasks.consumers import ConsumerKeys, consumer_id
from tasks.reaper import Restorer

log = logging.getLogger(__name__)


FETCH_BATCH = 100
# Wait per BLMOVE when consuming several queues: the wait watches one list at a time.
MULTI_QUEUE_WAIT = 0.2
# Pause between attempts while Redis refuses to record what we take (OOM, READONLY, MISCONF).
PAUSE_MS = 1000


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
                queue,
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
        if fetch_was_lost():
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
        return fetch_once(pool, script, keys, args)

    def reconcile(self) -> int:
        """Give back what this consumer's record holds but the process never received."""
        return reconcile(self._shared_client, self.taken_key, self.qos._delivered, self._restorer)

    @cached_property
    def _restorer(self) -> Restorer:
        return Restorer(self._shared_client, self.unacked_key, self.unacked_index_key)

    @cached_property
    def _fetch_script(self) -> Any:
        return self._shared_client.register_script(FETCH_SCRIPT)

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
