"""Queue state read from Redis for operators: the API's /metrics and `gateway status`.

Plain functions over a synchronous redis client, returning dataclasses. Every read is O(1) or
O(number of queues, kinds or worker processes), never O(messages): a scrape stays cheap whatever
the backlog. Two round trips (pipelines) per snapshot.

How each figure is read:

- depth: LLEN of the queue's list (kombu's priority-0 list, the only one the gateway writes).
- oldest age: LINDEX -1 (the consuming end: messages are LPUSHed, taken from the right, and the
  reaper puts a dead worker's messages back on the right) gives the oldest message; its headers
  name the task and its id, which is the id of the record the work belongs to, and the record
  says when it was accepted: a job's ``created_at``, an event's ``received_at``, a delivery's
  ``created_at`` or, on a retry, its ``next_attempt_at`` (exact). A retried or delayed *job*
  records no due time, so its age counts from acceptance and overstates the wait by the backoff
  or delay. Plain tasks (``tasks.add``, ``periodic.fire``) have no record: age unknown (None).
- scheduled and lag: ZCARD of the schedule; ZRANGE 0 0 WITHSCORES gives the earliest due time,
  and the lag is how far in the past it is (0 if not yet due): movers keep it near 0.
- dead letters by kind: a per-kind count kept next to the dead-letter set in the same
  transactions that add or replay one (Keys.dead_letter_counts), since counting members of the
  set by kind would read every member's record (ZCARD gives the total, counted or not).
- workers alive: each worker process's liveness key (tasks/liveness.py) holds the queues it
  consumes, and lives only while the worker renews it: SMEMBERS of the consumer registry, then
  one MGET.
- in flight (``gateway status`` only): HVALS of each live consumer's taken hash (delivery tag ->
  source list), so O(messages held); the API's scrape leaves it to the workers' own metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis

from tasks.changes import ACTIVITY, minute
from tasks.consumers import ConsumerKeys
from tasks.keys import Keys
from tasks.queues import QUEUES
from tasks.reaper import QUEUE_SEP

# kombu's unacked hash (Celery's default name, not prefixed): the consumer keys live next to it
UNACKED_KEY = "unacked"
# liveness values written by workers from before the queue list was recorded
UNKNOWN_QUEUE = "unknown"


@dataclass(frozen=True)
class QueueState:
    """One queue: messages waiting, how long the oldest has waited, worker processes alive."""

    name: str
    depth: int
    oldest_age_seconds: float | None  # None: empty queue gives 0; None means it cannot be dated
    workers_alive: int
    in_flight: int | None = None  # read only when asked (O(messages held))


@dataclass(frozen=True)
class Snapshot:
    """Everything an operator looks at first, read at one moment."""

    queues: list[QueueState]
    scheduled: int
    schedule_lag_seconds: float
    dead_letters: dict[str, int] = field(default_factory=dict)
    dead_letters_total: int = 0  # ZCARD of the set: includes any from before the counts were kept
    workers_alive: dict[str, int] = field(default_factory=dict)
    taken_at: float = 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch(iso: Any) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(_text(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _record_of(keys: Keys, message: Any) -> tuple[str, tuple[str, ...]] | None:
    """(record key, timestamp fields, latest wins) the oldest message's age is read from."""
    try:
        headers = orjson.loads(message).get("headers") or {}
        task, ident = str(headers.get("task") or ""), str(headers.get("id") or "")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not ident:
        return None
    if task.startswith("jobs."):
        return keys.job(ident), ("created_at",)
    if task == "webhooks.process":
        return keys.event(ident), ("received_at",)
    if task == "callbacks.deliver":
        return keys.delivery(ident), ("created_at", "next_attempt_at")
    return None


def _workers_by_queue(values: list[Any]) -> dict[str, int]:
    counts = dict.fromkeys(QUEUES, 0)
    for value in values:
        if value is None:
            continue  # registered but its liveness key lapsed: dead (or not renewed yet)
        names = [q for q in _text(value).split(",") if q in counts]
        for name in names or [UNKNOWN_QUEUE]:
            counts[name] = counts.get(name, 0) + 1
    return counts


def snapshot(client: redis.Redis, keys: Keys, *, in_flight: bool = False) -> Snapshot:
    """Read the queues, schedule, dead letters and workers; raises redis.RedisError if down."""
    consumers = ConsumerKeys(UNACKED_KEY)
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
        pipe.lindex(queue, -1)
    pipe.zcard(keys.schedule)
    pipe.zrange(keys.schedule, 0, 0, withscores=True)
    pipe.hgetall(keys.dead_letter_counts)
    pipe.zcard(keys.dead_letters)
    pipe.smembers(consumers.registry)
    first = pipe.execute()
    now = time.time()
    depths = first[0 : 2 * len(QUEUES) : 2]
    oldest = first[1 : 2 * len(QUEUES) : 2]
    scheduled, earliest, dead_raw, dead_total, registry = first[2 * len(QUEUES) :]
    members = sorted(_text(m) for m in registry)

    records = [_record_of(keys, message) if message else None for message in oldest]
    pipe = client.pipeline(transaction=False)
    for record in records:
        if record is not None:
            pipe.hmget(record[0], list(record[1]))
    if members:
        pipe.mget([consumers.alive(m) for m in members])
    second = pipe.execute()
    alive_values: list[Any] = second.pop() if members else []
    stamps = iter(second)

    ages: list[float | None] = []
    for depth, record in zip(depths, records, strict=True):
        times = [t for t in map(_epoch, next(stamps)) if t is not None] if record else []
        if not depth:
            ages.append(0.0)
        else:
            ages.append(max(0.0, now - max(times)) if times else None)

    workers = _workers_by_queue(alive_values)
    held = _in_flight(client, consumers, members, alive_values) if in_flight else {}
    lag = max(0.0, now - float(earliest[0][1])) if earliest else 0.0
    dead = {_text(k): max(0, int(v)) for k, v in dead_raw.items()}
    queues = [
        QueueState(q, int(d), a, workers.get(q, 0), held.get(q, 0) if in_flight else None)
        for q, d, a in zip(QUEUES, depths, ages, strict=True)
    ]
    return Snapshot(queues, int(scheduled), lag, dead, int(dead_total), workers, now)


def _in_flight(
    client: redis.Redis, consumers: ConsumerKeys, members: list[str], alive: list[Any]
) -> dict[str, int]:
    """Messages held by live consumers, by queue (kombu names priority lists queue+sep+n)."""
    live = [m for m, value in zip(members, alive, strict=True) if value is not None]
    if not live:
        return {}
    pipe = client.pipeline(transaction=False)
    for member in live:
        pipe.hvals(consumers.taken(member))
    counts: dict[str, int] = {}
    for sources in pipe.execute():
        for source in sources:
            queue = _text(source).split(QUEUE_SEP, 1)[0]
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def last_hour(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, list[int]]:
    """Per-minute activity counts (tasks/changes.py) for the 60 minutes ending with this one.

    One pipelined round trip of 60 HGETALLs of small hashes; a minute nothing happened in has no
    hash and counts 0. Keys ``minutes`` (epoch minute of each slot, oldest first) and each of
    ACTIVITY.
    """
    current = minute(now)
    minutes = list(range(current - 59, current + 1))
    pipe = client.pipeline(transaction=False)
    for slot in minutes:
        pipe.hgetall(keys.activity(slot))
    counts: dict[str, list[int]] = {"minutes": minutes, **{what: [] for what in ACTIVITY}}
    for raw in pipe.execute():
        fields = {_text(k): int(v) for k, v in raw.items()}
        for what in ACTIVITY:
            counts[what].append(fields.get(what, 0))
    return counts
