"""The reaper: a dead consumer's messages back at the front of their queues, atomically.

The design is in tasks/liveness.py; this module is the pass itself, run by one worker at a time,
and the one way a recorded message goes back (``Restorer``), also used by a worker giving back
what it took but never received (tasks/broker_fetch.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from core.kinds import KINDS
from core.settings import get_settings
from tasks import job_index
from tasks.consumers import ConsumerKeys, consumer_id
from tasks.keys import Keys

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


def restorable(record: bytes) -> bytes:
    """The message of a kombu unacked record, marked redelivered as kombu's restore does."""
    payload = json.loads(record)[0]
    payload.setdefault("headers", {})["redelivered"] = True
    payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    return json.dumps(payload).encode()


class Restorer:
    """Puts recorded messages back at the front of the lists they came from, atomically."""

    def __init__(self, client: redis.Redis, unacked: str, index: str) -> None:
        self.client, self.unacked, self.index = client, unacked, index
        self._restore = client.register_script(_RESTORE)

    def restore(self, taken: str, entries: dict[Any, Any]) -> int:
        """Restore the given tags (tag -> source list) still unacked; drop their taken entries."""
        restored = 0
        tags = list(entries)
        for start in range(0, len(tags), _BATCH):
            batch = tags[start : start + _BATCH]
            records: list[Any] = self.client.hmget(self.unacked, batch)
            args: list[Any] = []
            for tag, record in zip(batch, records, strict=True):
                if record is None:
                    args += [tag, b"", b"", b""]  # acked or restored already: drop the entry
                else:
                    args += [tag, record, entries[tag], restorable(record)]
            restored += int(self._restore(keys=[self.unacked, self.index, taken], args=args))
        return restored


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
        self.restorer = Restorer(client, unacked, index)

    def run(self, lock_ms: int) -> int:
        """Restore the messages of dead consumers, if no other worker did so this interval."""
        if not self.client.set(self.keys.lock, consumer_id(), nx=True, px=lock_ms):
            return 0
        keys = [self.keys.registry, self.keys.missing]
        dead = self._dead(keys=keys, args=[0, self.grace, self.keys.alive_prefix])
        restored = sum(self.restore_consumer(c.decode()) for c in dead)
        restored += self.restore_overdue()
        self.trim_job_index()
        return restored

    def trim_job_index(self) -> None:
        """Drop job index entries older than the job TTL (tasks/job_index.py): one pipelined
        ZREMRANGEBYSCORE per set, cheap, and done by one worker per interval like the rest."""
        settings = get_settings()
        keys = Keys(settings.redis_key_prefix)
        trimmed = job_index.trim(self.client, keys, KINDS, settings.job_ttl_seconds)
        if trimmed:
            log.info("job index: %d entries older than the job TTL trimmed", trimmed)

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
                restored += self.restorer.restore(self.keys.taken(consumer), dict(overdue))
                log.warning(
                    "consumer %s held %d messages past their time limit: restored",
                    consumer,
                    len(overdue),
                )
        return restored

    def _limit(self, source: bytes) -> float:
        queue = source.decode().split(QUEUE_SEP, 1)[0]  # kombu names priority lists queue+sep+n
        return self.time_limits.get(queue, max(self.time_limits.values()))

    def restore_consumer(self, consumer: str) -> int:
        """Put back every message a dead consumer still holds; forget the consumer."""
        taken = self.keys.taken(consumer)
        restored = 0
        while True:
            entries: dict[Any, Any] = self.client.hscan(taken, 0, count=_BATCH)[1]  # type: ignore[assignment]
            if not entries:
                break
            restored += self.restorer.restore(taken, entries)
        pipe = self.client.pipeline()
        pipe.srem(self.keys.registry, consumer)
        pipe.hdel(self.keys.missing, consumer)
        pipe.execute()
        if restored:
            log.warning("consumer %s is gone: %d of its messages restored", consumer, restored)
        return restored
