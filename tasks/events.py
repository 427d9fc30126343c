"""Inbound webhook events in Redis: the atomic record-and-enqueue the 202 waits for, and reading.

An event is recorded ``received`` (or at once ``ignored``: a type the source does not accept) and
moves along the status machine drawn in core/statuses.py. It is one Redis hash (keys.Keys.event)
holding the raw body exactly as received, at most MAX_WEBHOOK_BODY_BYTES, kept for
JOB_TTL_SECONDS like the deliveries it makes. The sender's delivery id is claimed in the same Lua
script that writes the record and LPUSHes the ``webhooks.process`` message: one round trip, so
concurrent duplicates cannot both get in. The same script indexes the event by received time, in
every event's and its source's sorted sets, trimmed there past the TTL (tasks/event_index.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from core.statuses import EventStatus
from tasks.deliveries import list_for
from tasks.event_index import trim_below
from tasks.keys import Keys
from tasks.pipelined import PipelinedRedis
from tasks.protocol import dumps, job_message
from tasks.queues import WEBHOOKS
from tasks.store import now_iso

PROCESS_TASK = "webhooks.process"
JSON_FIELDS = ("routes", "jobs", "error", "headers")
_MAX_ID = 128  # longer sender ids are hashed: they become part of a Redis key

_RECORD = """
-- KEYS: dedup key, event hash, queue list, every event's index, the source's index
-- ARGV: dedup ttl, event id, event ttl, message ('' = nothing to process),
--       received (epoch us), trim below (epoch us), then field/value pairs
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[4]) end
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[6])
redis.call('EXPIRE', KEYS[5], ARGV[3])
return false
"""


_RECORD_SHA = hashlib.sha1(_RECORD.encode()).hexdigest()  # noqa: S324 (Redis's script id)


def dedup_id(delivery_id: str | None, body: bytes) -> str:
    """What duplicates are recognised by: the sender's delivery id, else the body's SHA-256."""
    if delivery_id is None:
        return "body:" + hashlib.sha256(body).hexdigest()
    if len(delivery_id) > _MAX_ID:
        return "sha256:" + hashlib.sha256(delivery_id.encode()).hexdigest()
    return "id:" + delivery_id


@dataclass(frozen=True)
class NewEvent:
    """One verified inbound webhook, ready to record."""

    id: str
    source: str
    delivery_id: str | None
    type: str
    content_type: str
    body: bytes
    status: EventStatus = EventStatus.RECEIVED  # or IGNORED: recorded, never processed
    reason: str | None = None
    traceparent: str = ""  # the ingest span (core/tracing.py): processing is its child
    tracestate: str = ""
    headers: Mapping[str, str] | None = None  # as the console shows them: secrets already masked


def process_message(event_id: str) -> str:
    """The ``webhooks.process`` message for one event."""
    return job_message(PROCESS_TASK, event_id, WEBHOOKS)


class EventStore:
    """The gateway's side of events: record-and-enqueue (with dedup), and read."""

    def __init__(
        self, redis: Redis, keys: Keys, ttl: int, dedup_ttl: int, fast: PipelinedRedis
    ) -> None:
        self.redis, self.keys, self.fast = redis, keys, fast
        self.ttl, self.dedup_ttl = ttl, dedup_ttl

    async def record(self, event: NewEvent) -> str | None:
        """Record and enqueue ``event``; for a delivery id seen before, return that event's id."""
        fields: list[str | bytes | int] = [
            "id", event.id,
            "source", event.source,
            "delivery_id", event.delivery_id or "",
            "type", event.type,
            "content_type", event.content_type,
            "body", event.body,
            "body_bytes", len(event.body),
            "received_at", now_iso(),
            "status", event.status,
            "reason", event.reason or "",
            "attempts", 0,
            "traceparent", event.traceparent,
            "tracestate", event.tracestate,
            "headers", dumps(event.headers) if event.headers is not None else "",
        ]  # fmt: skip
        message = process_message(event.id) if event.status == EventStatus.RECEIVED else ""
        dedup_key = self.keys.webhook_seen(event.source, dedup_id(event.delivery_id, event.body))
        received = time.time_ns() // 1000
        indexes = [self.keys.events_by_time, self.keys.events_from(event.source)]
        seen = await self.fast.eval_script(
            _RECORD,
            _RECORD_SHA,
            [dedup_key, self.keys.event(event.id), WEBHOOKS, *indexes],
            [self.dedup_ttl, event.id, self.ttl, message, received, trim_below(received, self.ttl),
             *fields],
        )  # fmt: skip
        if seen is None:
            return None
        return seen.decode() if isinstance(seen, bytes) else str(seen)

    async def view(self, event_id: str, *, with_body: bool = False) -> dict[str, Any] | None:
        """An event as the API shows it: its record, the jobs it started and its deliveries."""
        raw = await self.redis.hgetall(self.keys.event(event_id))
        if not raw:
            return None
        event = decode(raw)
        body = event.pop("body", b"")
        if with_body:
            event["body"] = body.decode("utf-8", errors="replace")
        job_ids = event.get("jobs") or []
        jobs = []
        if job_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.keys.job(job_id), "kind", "status")
                replies = await pipe.execute()
            for job_id, (kind, status) in zip(job_ids, replies, strict=True):
                jobs.append({"id": job_id, "kind": _text(kind), "status": _text(status)})
        event["jobs"] = jobs
        event["deliveries"] = await list_for(self.redis, self.keys, f"event:{event_id}")
        return event


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """An event hash back into typed fields (``body`` stays bytes, exactly as received)."""
    event: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == "body":
            event[name] = value if isinstance(value, bytes) else str(value).encode()
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        if name in JSON_FIELDS:
            event[name] = json.loads(text) if text else None
        elif name in ("attempts", "body_bytes"):
            event[name] = int(text) if text else 0
        else:
            event[name] = text or None
    return event
