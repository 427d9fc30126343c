"""The callbacks queue: one signed attempt per message, then delivered, retried or dead-lettered.

The delivery status machine is drawn in core/statuses.py: an attempt ends delivered, waits
retrying (a failure with attempts left), or ends failed (410 Gone, or an address the guard
refuses: never retried) or dead (a failure, no attempts left).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from core.retry import policy_for
from core.settings import get_settings
from core.statuses import DELIVERY_DEAD_LETTER, DeliveryStatus
from core.tracing import TraceContext, from_record, traced
from handlers.delivery import deliver
from handlers.signing import standard_webhooks_key
from tasks import loop
from tasks.app import app
from tasks.clients import get_clients
from tasks.deliveries import (
    CALLBACK_POLICY,
    DELIVER_TASK,
    attempt_record,
    claim,
)
from tasks.pipelined import Commands
from tasks.protocol import task_message
from tasks.queues import CALLBACKS
from tasks.runtime import fast_redis, keys, requeued_if_redis_fails
from tasks.store import encode, now_iso

# What an attempt's verdict makes of a delivery with no retry ahead of it.
_AFTER_LAST = {
    "delivered": DeliveryStatus.DELIVERED,
    "stop": DeliveryStatus.FAILED,
    "retry": DeliveryStatus.DEAD,
}


def signing_keys() -> list[bytes]:
    """HMAC keys of every configured signing secret (the first is current)."""
    return [standard_webhooks_key(s.get_secret_value()) for s in get_settings().signing_secrets]


def run_delivery(delivery_id: str) -> str | None:
    """Make one attempt of delivery ``delivery_id``; returns its status afterwards."""
    k = keys()
    # Redis through the process loop's pipelined connection: in the loop pool a blocking call
    # would hold up every delivery in flight (tasks/pool.py)
    record = loop.run(claim(fast_redis(), k, delivery_id))
    if record is None:
        return None
    # each attempt is a span of the trace that made the delivery; its id goes out as traceparent
    span = {"gateway.delivery_id": delivery_id, "gateway.attempt": record["attempts"]}
    with traced(from_record(record), "delivery.attempt", kind="client", attributes=span) as trace:
        return _attempt(delivery_id, record, trace)


def _attempt(delivery_id: str, record: dict[str, Any], trace: TraceContext) -> str:
    k = keys()
    number = int(record["attempts"])
    body = str(record["body"]).encode()
    # the process's one guarded client (tasks/clients.py), shared with attachment fetches
    client = get_clients().outbound
    outcome = loop.run(
        deliver(client, record["url"], delivery_id, body, signing_keys(), trace.headers())
    )
    policy = policy_for("callbacks", CALLBACK_POLICY)
    if outcome.verdict == "retry" and number < int(record["max_attempts"]):
        status = DeliveryStatus.RETRYING
    else:
        status = _AFTER_LAST[outcome.verdict]
    key = k.delivery(delivery_id)
    fields: dict[str, object] = {"status": status, "last_error": outcome.error}
    writes = Commands()
    writes.rpush(
        k.delivery_attempts(delivery_id),
        attempt_record(number, outcome.status_code, outcome.latency_ms, outcome.error),
    )
    if status == DeliveryStatus.RETRYING:
        due = time.time() + policy.delay(number, outcome.retry_after)
        fields["next_attempt_at"] = datetime.fromtimestamp(due, UTC).isoformat()
        message = task_message(DELIVER_TASK, delivery_id, CALLBACKS, [delivery_id])
        writes.zadd(k.schedule, {f"{CALLBACKS}\n{message}": due})
    else:
        fields["finished_at"] = now_iso()
        fields["next_attempt_at"] = None
    writes.hset(key, mapping=encode(fields))
    ttl = get_settings().job_ttl_seconds
    if status in DELIVERY_DEAD_LETTER:
        writes.persist(key)
        writes.persist(k.delivery_attempts(delivery_id))
        writes.zadd(k.dead_letters, {f"delivery:{delivery_id}": time.time()})
    else:
        writes.expire(key, ttl)
        writes.expire(k.delivery_attempts(delivery_id), ttl)
    loop.run(fast_redis().transaction(writes))
    return status


@app.task(name=DELIVER_TASK)
def deliver_callback(delivery_id: str) -> str | None:
    """Thin task: one attempt of one delivery."""
    with requeued_if_redis_fails():
        return run_delivery(delivery_id)
