"""Who holds which message, and the reaper that gives a dead consumer's messages back in seconds.

Every consuming worker process has a consumer id of its own (hostname, pid and random bits: two
workers may share a Celery hostname) and keeps a liveness key with a short TTL, renewed from a
thread of its own so that neither a busy event loop nor a reconnecting consumer lets it lapse.
The fetch script (tasks/broker.py) records each message it takes under its consumer, in the same
atomic step as kombu's unacked record: ``<unacked>:taken:<consumer>`` maps the delivery tag to
the list it came from.

Each worker also runs the reaper, one at a time across workers (a SET NX lock per interval). A
consumer whose liveness key is gone on two reaper passes at least ``grace`` apart is dead (a
live worker cut off by a Redis restart renews within a second of Redis coming back, so it is
never mistaken for one); every message it still holds in kombu's unacked hash goes back to the
front of the list it came from, atomically per batch, and runs on another worker. A healthy
worker's hour-long task is never handed out again, since its liveness key never lapses.

As a last resort, a message a live consumer has held past its queue's time limit (plus ``grace``)
goes back too: the worker lost track of it (prefork stops a task at its limit; the other pools'
tasks wait on clients whose timeouts are far below it). kombu's visibility timeout stays as the
backstop for what no consumer recorded.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

import redis

log = logging.getLogger(__name__)

_BATCH = 200
QUEUE_SEP = "\x06\x16"  # kombu's separator between a queue's name and its priority

# KEYS: registry of consumers, their missing-since hash. ARGV: unused, grace, alive key prefix.
# Returns the consumers missing on two passes at least `grace` apart; forgets live ones. The
# server's clock, not the workers': passes are made by different machines.
_DEAD = """
local t = redis.call('TIME')
ARGV[1] = tonumber(t[1]) + tonumber(t[2]) / 1000000
local dead = {}
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. c) == 1 then
    redis.call('HDEL', KEYS[2], c)
  else
    local since = redis.call('HGET', KEYS[2], c)
    if not since then
      redis.call('HSET', KEYS[2], c, ARGV[1])
    elseif tonumber(ARGV[1]) - tonumber(since) >= tonumber(ARGV[2]) then
      dead[#dead + 1] = c
    end
  end
end
return dead
"""

# KEYS: kombu's unacked hash and index, the dead consumer's taken hash.
# ARGV: (tag, unacked record as read, list, payload to push) repeated. A record changed since it
# was read (acked, restored by someone else) is left alone; the taken entry goes either way.
_RESTORE = """
local n = 0
for i = 1, #ARGV, 4 do
  local tag = ARGV[i]
  if redis.call('HGET', KEYS[1], tag) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[2], tag)
    redis.call('RPUSH', ARGV[i + 2], ARGV[i + 3])
    n = n + 1
  end
  redis.call('HDEL', KEYS[3], tag)
end
return n
"""

_identity: tuple[int, str] | None = None


def consumer_id() -> str:
    """This process's consumer id (a new one after a fork)."""
    global _identity
    if _identity is None or _identity[0] != os.getpid():
        name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        _identity = (os.getpid(), name)
    return _identity[1]


class ConsumerKeys:
    """Key names, next to kombu's unacked hash (same database, same naming)."""

    def __init__(self, unacked_key: str) -> None:
        self.registry = f"{unacked_key}:consumers"
        self.missing = f"{unacked_key}:missing"
        self.lock = f"{unacked_key}:reaper"
        self.alive_prefix = f"{unacked_key}:alive:"
        self.taken_prefix = f"{unacked_key}:taken:"

    def alive(self, consumer: str) -> str:
        """The consumer's liveness key."""
        return self.alive_prefix + consumer

    def taken(self, consumer: str) -> str:
        """Hash of delivery tag -> source list, of the messages the consumer holds."""
        return self.taken_prefix + consumer


def restorable(record: bytes) -> bytes:
    """The message of a kombu unacked record, marked redelivered as kombu's restore does."""
    payload = json.loads(record)[0]
    payload.setdefault("headers", {})["redelivered"] = True
    payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    return json.dumps(payload).encode()


class Reaper:
    """One pass of the reaper over every consumer on record."""

    def __init__(
        self,
        client: redis.Redis,
        unacked: str,
        index: str,
        grace: float,
        time_limits: dict[str, float] | None = None,
    ) -> None:
        self.client, self.unacked, self.index, self.grace = client, unacked, index, grace
        self.time_limits = time_limits or {}
        self.keys = ConsumerKeys(unacked)
        self._dead = client.register_script(_DEAD)
        self._restore = client.register_script(_RESTORE)

    def run(self, lock_ms: int) -> int:
        """Restore the messages of dead consumers, if no other worker did so this interval."""
        if not self.client.set(self.keys.lock, consumer_id(), nx=True, px=lock_ms):
            return 0
        keys = [self.keys.registry, self.keys.missing]
        dead = self._dead(keys=keys, args=[0, self.grace, self.keys.alive_prefix])
        restored = sum(self.restore_consumer(c.decode()) for c in dead)
        return restored + self.restore_overdue()

    def restore_overdue(self) -> int:
        """Put back messages held past their queue's time limit plus grace, by any consumer."""
        if not self.time_limits:
            return 0
        now = time.time()
        oldest = now - min(self.time_limits.values()) - self.grace
        rows: list[Any] = self.client.zrangebyscore(self.index, "-inf", oldest, withscores=True)
        taken_at: dict[Any, float] = dict(rows)
        if not taken_at:
            return 0
        tags = list(taken_at)
        restored = 0
        members: set[Any] = self.client.smembers(self.keys.registry)
        for member in members:
            consumer = member.decode()
            lists: list[Any] = self.client.hmget(self.keys.taken(consumer), tags)
            overdue = [
                (tag, source)
                for tag, source in zip(tags, lists, strict=True)
                if source is not None and now - taken_at[tag] > self._limit(source) + self.grace
            ]
            if overdue:
                restored += self._restore_tags(self.keys.taken(consumer), dict(overdue))
                log.warning(
                    "consumer %s held %d messages past their time limit: restored",
                    consumer,
                    len(overdue),
                )
        return restored

    def _limit(self, source: bytes) -> float:
        queue = source.decode().split(QUEUE_SEP, 1)[0]  # kombu names priority lists queue+sep+n
        return self.time_limits.get(queue, max(self.time_limits.values()))

    def _restore_tags(self, taken: str, entries: dict[Any, Any]) -> int:
        """Restore the given tags (tag -> source list) still unacked, atomically per batch."""
        tags = list(entries)
        records: list[Any] = self.client.hmget(self.unacked, tags)
        args: list[Any] = []
        for tag, record in zip(tags, records, strict=True):
            if record is None:
                args += [tag, b"", b"", b""]  # acked or restored already: drop the entry
            else:
                args += [tag, record, entries[tag], restorable(record)]
        return int(self._restore(keys=[self.unacked, self.index, taken], args=args))

    def restore_consumer(self, consumer: str) -> int:
        """Put back every message a dead consumer still holds; forget the consumer."""
        taken = self.keys.taken(consumer)
        restored = 0
        while True:
            entries: dict[Any, Any] = self.client.hscan(taken, 0, count=_BATCH)[1]  # type: ignore[assignment]
            if not entries:
                break
            restored += self._restore_tags(taken, entries)
        pipe = self.client.pipeline()
        pipe.srem(self.keys.registry, consumer)
        pipe.hdel(self.keys.missing, consumer)
        pipe.execute()
        if restored:
            log.warning("consumer %s is gone: %d of its messages restored", consumer, restored)
        return restored


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

    def renew(self) -> None:
        """Set the liveness key for another TTL and make sure the consumer is on record."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.alive(self.consumer), "1", px=int(self.ttl * 1000))
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
) -> None:
    """Start this process's liveness thread once (again in a forked child)."""
    global _running
    with _lock:
        if _running is not None and _running.is_alive() and _running.consumer == consumer_id():
            return
        _running = Liveness(client_factory(), unacked, index, ttl, every, time_limits)
        _running.start()


def stop() -> None:
    """Stop this process's liveness thread, if any."""
    global _running
    with _lock:
        if _running is not None:
            _running.stop()
            _running = None
