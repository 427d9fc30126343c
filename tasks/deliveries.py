"""Delivery records: one outbound message (callback or forwarded event) and its attempts.

A delivery's id is its ``webhook-id``: the same on every attempt and on a replay, so a receiver can
drop what it has already seen. Creating a delivery and queueing its first attempt go into the
caller's Redis transaction, so a final job and its callback are written together or not at all.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from redis.client import Pipeline

from core.retry import RetryPolicy
from core.statuses import DeliveryStatus, JobStatus
from tasks.claims import DELIVERY_CLAIM
from tasks.claims import claim as claim_record
from tasks.keys import Keys
from tasks.pipelined import Commands, PipelinedRedis
from tasks.protocol import dumps, task_message
from tasks.queues import CALLBACKS
from tasks.store import decode, encode, now_iso

DELIVER_TASK = "callbacks.deliver"

# Modelled on the published industry schedule: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 10 h (each ±20 %). RETRY_POLICIES={"callbacks": {...}} overrides it.
CALLBACK_POLICY = RetryPolicy(
    max_attempts=8,
    schedule=(5, 300, 1800, 7200, 18000, 36000, 36000),
    max_seconds=36000,
    jitter=0.2,
)


def new_delivery_id() -> str:
    """A fresh delivery id in the Standard Webhooks style."""
    return f"msg_{uuid.uuid4().hex}"


def job_event(job: dict[str, Any], status: str, result: Any, error: Any) -> dict[str, Any]:
    """The callback body for a job that reached a final status."""
    data: dict[str, Any] = {
        "id": job["id"],
        "kind": job["kind"],
        "status": status,
        "attempts": int(job["attempts"]),
    }
    if status == JobStatus.SUCCEEDED:
        data["result"] = result
    else:
        data["error"] = error
    kind = "job.succeeded" if status == JobStatus.SUCCEEDED else "job.failed"
    return {"type": kind, "timestamp": now_iso(), "data": data}


def add_delivery(
    pipe: Pipeline | Commands,
    keys: Keys,
    *,
    url: str,
    body: dict[str, Any],
    parent: str,
    owner: str,
    max_attempts: int,
    ttl: int,
    delivery_id: str | None = None,
    endpoint_id: str = "",
    traceparent: str = "",
    tracestate: str = "",
) -> str:
    """Queue commands that record a delivery and enqueue its first attempt; returns its id.

    ``endpoint_id`` names the endpoint (tasks/endpoints.py) the delivery is for: its secret signs
    it and its limits pace it. Empty for a job's callback_url and a source's forward URL.
    ``traceparent``/``tracestate``: the span that made the delivery (core/tracing.py
    ``current_fields``); each attempt is its child and sends its own span id.
    """
    delivery_id = delivery_id or new_delivery_id()
    record = {
        "id": delivery_id,
        "url": url,
        "event_type": body.get("type", ""),
        "body": dumps(body),
        "parent": parent,
        "owner": owner,
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "max_attempts": max_attempts,
        "created_at": now_iso(),
    }
    if endpoint_id:
        record["endpoint_id"] = endpoint_id
    if traceparent:
        record["traceparent"], record["tracestate"] = traceparent, tracestate
    key = keys.delivery(delivery_id)
    pipe.hset(key, mapping=encode(record))
    pipe.expire(key, ttl)
    pipe.rpush(keys.deliveries(parent), delivery_id)
    pipe.expire(keys.deliveries(parent), ttl)
    message = task_message(DELIVER_TASK, delivery_id, CALLBACKS, [delivery_id])
    pipe.lpush(CALLBACKS, message)
    return delivery_id


async def claim(redis: PipelinedRedis, keys: Keys, delivery_id: str) -> dict[str, Any] | None:
    """Mark an attempt as started; None when the delivery is unknown or already final."""
    fields = await claim_record(redis, DELIVERY_CLAIM, keys.delivery(delivery_id))
    return None if fields is None else decode(fields)


def attempt_record(
    attempt: int, status_code: int | None, latency_ms: float, error: str | None
) -> str:
    """One attempt as stored in the delivery's attempt list."""
    return json.dumps(
        {
            "attempt": attempt,
            "at": now_iso(),
            "status_code": status_code,
            "latency_ms": latency_ms,
            "error": error,
        }
    )


def view(record: dict[str, Any], attempts: list[bytes | str]) -> dict[str, Any]:
    """A delivery as the API shows it (the signed body is not repeated)."""
    return {
        "id": record["id"],
        "url": record["url"],
        "endpoint_id": record.get("endpoint_id"),
        "event_type": record.get("event_type"),
        "status": record["status"],
        "attempts": [json.loads(item) for item in attempts],
        "created_at": record.get("created_at"),
        "finished_at": record.get("finished_at"),
        "next_attempt_at": record.get("next_attempt_at"),
    }


async def list_for(redis: Any, keys: Keys, parent: str) -> list[dict[str, Any]]:
    """Every delivery made for ``parent`` ('job:<id>' / 'event:<id>'), with its attempts."""
    ids = [raw.decode() for raw in await redis.lrange(keys.deliveries(parent), 0, -1)]
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for delivery_id in ids:
            pipe.hgetall(keys.delivery(delivery_id))
            pipe.lrange(keys.delivery_attempts(delivery_id), 0, -1)
        replies = await pipe.execute()
    return [
        view(decode(record), attempts)
        for record, attempts in zip(replies[::2], replies[1::2], strict=True)
        if record
    ]
