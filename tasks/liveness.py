"""Who holds which message, and the reaper that gives a dead consumer's messages back in seconds.

Every consuming worker process has a consumer id of its own (hostname, pid and random bits: two
workers may share a Celery hostname) and keeps a liveness key with a short TTL, renewed from a
thread of its own so that neither a busy event loop nor a reconnecting consumer lets it lapse.
The fetch script (tasks/broker_fetch.py) records each message it takes under its consumer, in the
same atomic step as kombu's unacked record: ``<unacked>:taken:<consumer>`` maps the delivery tag
to the list it came from.

Each worker also runs the reaper (tasks/reaper.py), one at a time across workers (a SET NX lock
per interval). A consumer whose liveness key is gone on two reaper passes at least ``grace`` apart
is dead (a live worker cut off by a Redis restart renews within a second of Redis coming back, so
it is never mistaken for one); every message it still holds in kombu's unacked hash goes back to
the front of the list it came from, atomically per batch, and runs on another worker. A healthy
worker's hour-long task is never handed out again, since its liveness key never lapses.

As a last resort, a message a live consumer has held past its queue's time limit (plus ``grace``)
goes back too: the worker lost track of it (prefork stops a task at its limit; the other pools'
tasks wait on clients whose timeouts are far below it). kombu's visibility timeout stays as the
backstop for what no consumer recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from tasks.consumers import ConsumerKeys, consumer_id
from tasks.reaper import Reaper

log = logging.getLogger(__name__)


class Liveness(threading.Thread):
    """Renews this process's liveness key and runs the reaper, until stopped."""

    def __init__(
        self,
        client: redis.Redis,
        unacked: str,
        index: str,
        ttl: float,
        reap_every: float,
        time_limits: dict[str, float] | None = None,
    ) -> None:
        super().__init__(name="liveness", daemon=True)
        self.client, self.ttl, self.reap_every = client, ttl, reap_every
        self.consumer = consumer_id()
        self.keys = ConsumerKeys(unacked)
        self.reaper = Reaper(client, unacked, index, reap_every, time_limits)
        self._halt = threading.Event()
        self._failing = False
        # what the liveness key holds: the queues consumed, for gateway_workers_alive{queue}
        # (replaced whole, never mutated: the thread reads it while consumers are added)
        self.queues: tuple[str, ...] = ()

    def renew(self) -> None:
        """Set the liveness key for another TTL and make sure the consumer is on record."""
        pipe = self.client.pipeline(transaction=False)
        value = ",".join(self.queues) or "1"
        pipe.set(self.keys.alive(self.consumer), value, px=int(self.ttl * 1000))
        pipe.sadd(self.keys.registry, self.consumer)
        pipe.execute()

    def run(self) -> None:
        next_reap = time.monotonic() + self.reap_every
        while not self._halt.is_set():
            try:
                self.renew()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_every
                    self.reaper.run(lock_ms=int(self.reap_every * 1000 * 0.9))
                if self._failing:
                    log.info("liveness: Redis answers again")
                self._failing = False
                wait = min(self.ttl / 3, max(0.1, next_reap - time.monotonic()))
            except redis.RedisError as exc:
                # Redis down, loading, read-only, full: retry soon, renewing the moment it is back
                if not self._failing:
                    log.warning("liveness: Redis unavailable (%s); retrying every second", exc)
                self._failing = True
                wait = 1.0
            except Exception:  # the thread must outlive any surprise: the worker depends on it
                log.exception("liveness: unexpected error; retrying")
                wait = 1.0
            self._halt.wait(wait)

    def stop(self) -> None:
        """Stop renewing and drop the liveness key (a clean exit restores its own messages)."""
        self._halt.set()
        self.join(5)
        try:
            self.client.delete(self.keys.alive(self.consumer))
        except redis.RedisError:
            pass


_running: Liveness | None = None
_lock = threading.Lock()


def ensure_running(
    client_factory: Any,
    unacked: str,
    index: str,
    ttl: float,
    every: float,
    time_limits: dict[str, float] | None = None,
    queue: str | None = None,
) -> None:
    """Start this process's liveness thread once (again in a forked child); note ``queue``."""
    global _running
    with _lock:
        if _running is None or not _running.is_alive() or _running.consumer != consumer_id():
            _running = Liveness(client_factory(), unacked, index, ttl, every, time_limits)
            if queue:
                _running.queues = (queue,)
            _running.start()
        elif queue and queue not in _running.queues:
            _running.queues = tuple(sorted({*_running.queues, queue}))


def stop() -> None:
    """Stop this process's liveness thread, if any."""
    global _running
    with _lock:
        if _running is not None:
            _running.stop()
            _running = None
