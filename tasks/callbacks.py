"""The callbacks queue: one signed attempt per message, then delivered, retried or dead-lettered.

The delivery status machine is drawn in core/statuses.py: an attempt ends delivered, waits
retrying (a failure with attempts left), or ends failed (410 Gone, or an address the guard
refuses: never retried) or dead (a failure, no attempts left).

Every message passes the gate (tasks/endpoint_limits.py) instead of a bare claim: a delivery
without an endpoint is claimed as before, in the same one round trip; one for an endpoint may be
told to wait (back into the schedule, unclaimed) or be held while its endpoint is disabled. Its
endpoint is read by the gate itself (no extra round trip), so every attempt signs with the
endpoint's current secrets and goes to its current URL.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from core import logs
from core.retry import policy_for
from core.settings import get_settings
from core.statuses import DELIVERY_DEAD_LETTER, DELIVERY_FINAL, DeliveryStatus
from core.tracing import TraceContext, from_record, traced
from handlers.delivery import Attempt, deliver
from handlers.signing import standard_webhooks_key
from tasks import endpoint_limits, loop, metrics
from tasks.app import app
from tasks.clients import get_clients
from tasks.deliveries import CALLBACK_POLICY, DELIVER_TASK, attempt_record
from tasks.endpoint_limits import Gate
from tasks.endpoints import bump_version, load_all_async, offer
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


@lru_cache(maxsize=4096)
def _endpoint_keys(secrets: tuple[str, ...]) -> list[bytes]:
    # base64 decoding per attempt is cheap, but a busy endpoint's secrets repeat: decode once
    return [standard_webhooks_key(secret) for secret in secrets]


def run_delivery(delivery_id: str) -> str | None:
    """Make one attempt of delivery ``delivery_id``; returns its status afterwards.

    None when there was nothing to do now: unknown or final, waiting (back in the schedule) or
    held (its endpoint is disabled).
    """
    k = keys()
    s = get_settings()
    # Redis through the process loop's pipelined connection: in the loop pool a blocking call
    # would hold up every delivery in flight (tasks/pool.py)
    g = loop.run(
        endpoint_limits.gate(
            fast_redis(),
            k,
            delivery_id,
            lease=s.outbound_timeout_seconds + endpoint_limits.LEASE_MARGIN_SECONDS,
            wait=s.endpoint_wait_seconds,
            probe_interval=s.endpoint_probe_interval_seconds,
        )
    )
    if g is None or g.verdict == "held":
        return None
    if g.verdict == "wait":
        _wait(delivery_id, g)
        return None
    assert g.record is not None
    # each attempt is a span of the trace that made the delivery; its id goes out as traceparent
    span = {"gateway.delivery_id": delivery_id, "gateway.attempt": g.record["attempts"]}
    with traced(from_record(g.record), "delivery.attempt", kind="client", attributes=span) as trace:
        return _attempt(delivery_id, g, trace)


def _attempt(delivery_id: str, g: Gate, trace: TraceContext) -> str:
    k, s = keys(), get_settings()
    assert g.record is not None
    record = g.record
    number = int(record["attempts"])
    logs.bind(delivery_id=delivery_id, attempt=number, queue=CALLBACKS, parent=record["parent"])
    body = str(record["body"]).encode()
    # the process's one guarded client (tasks/clients.py), shared with attachment fetches
    client = get_clients().outbound
    if g.verdict == "orphan":
        outcome = Attempt("stop", None, 0.0, "endpoint deleted")
    elif g.endpoint is None:  # the common path: a job's callback_url, a source's forward URL
        keys_, url = signing_keys(), record["url"]
        outcome = loop.run(deliver(client, url, delivery_id, body, keys_, trace.headers()))
    else:
        ep = g.endpoint
        secrets = _endpoint_keys(tuple(ep.signing_secrets()))
        headers = {**(ep.headers or {}), **trace.headers()}  # the endpoint's, then the trace's
        outcome = loop.run(deliver(client, ep.url, delivery_id, body, secrets, headers))
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
    ttl = s.job_ttl_seconds
    if status in DELIVERY_DEAD_LETTER:
        writes.persist(key)
        writes.persist(k.delivery_attempts(delivery_id))
        writes.zadd(k.dead_letters, {f"delivery:{delivery_id}": time.time()})
        writes.hincrby(k.dead_letter_counts, "callback")  # tasks/monitor.py
    else:
        writes.expire(key, ttl)
        writes.expire(k.delivery_attempts(delivery_id), ttl)
    reason = ""
    if g.endpoint is not None and g.fields is not None:
        reason = _endpoint_outcome(writes, g, delivery_id, outcome, status)
    replies = loop.run(fast_redis().transaction(writes))
    if reason and replies and replies[-1] == b"disabled":
        endpoint_limits.log_disabled(g.endpoint.id if g.endpoint else "", reason)
    url = g.endpoint.url if g.endpoint else record["url"]
    metrics.delivery_done(url, status, outcome.status_code, outcome.latency_ms, outcome.error)
    return status


def _wait(delivery_id: str, g: Gate) -> None:
    """Put a delivery the gate held back into the schedule, due when it may go."""
    s = get_settings()
    if g.reason in ("busy", "ordered", "in_flight"):
        # a slot frees at no known time: spread the re-checks so they do not come back together
        g = replace(g, due=g.due + random.uniform(0, s.endpoint_wait_seconds))
    elif g.reason == "paused":
        # one of them takes the probe when it is due; a success brings the rest back at once
        g = replace(g, due=g.due + random.uniform(0, s.endpoint_probe_interval_seconds))
    writes = Commands()
    endpoint_limits.defer(writes, keys(), delivery_id, g)
    loop.run(fast_redis().transaction(writes))


def _endpoint_outcome(
    writes: Commands, g: Gate, delivery_id: str, outcome: Attempt, status: str
) -> str:
    """Queue the endpoint's side of an attempt; returns the reason if it may be disabled."""
    assert g.endpoint is not None and g.fields is not None
    s = get_settings()
    if outcome.verdict == "delivered":
        result = "ok"
    elif outcome.verdict == "stop" and outcome.status_code == 410:
        result = "gone"
    else:
        result = "fail"
    event: Commands | None = None
    reason = ""
    if result != "ok" and endpoint_limits.may_disable(
        g.fields, result, s.endpoint_disable_after_seconds
    ):
        reason = endpoint_limits.disable_reason(g.endpoint.url, g.fields, result)
        event = _disabled_event(g.endpoint.id, g.endpoint.url, reason)
    endpoint_limits.outcome(
        writes,
        keys(),
        g.endpoint.id,
        delivery_id,
        result=result,
        final=status in DELIVERY_FINAL,
        now_iso=now_iso(),
        pause_after=s.endpoint_pause_after_failures,
        disable_after=s.endpoint_disable_after_seconds,
        reason=reason,
        probe_interval=s.endpoint_probe_interval_seconds,
        disabled_event=event,
    )
    return reason


def _disabled_event(endpoint_id: str, url: str, reason: str) -> Commands:
    """The deliveries of an ``endpoint.disabled`` event to the endpoints subscribed to it."""
    endpoints = loop.run(load_all_async(fast_redis(), keys()))
    body: dict[str, Any] = {
        "type": "endpoint.disabled",
        "timestamp": now_iso(),
        "data": {"id": endpoint_id, "url": url, "reason": reason},
    }
    event = Commands()
    offer(
        event,
        keys(),
        [e for e in endpoints if e.id != endpoint_id],
        event_type="endpoint.disabled",
        source="gateway",
        body=body,
        parent=f"endpoint:{endpoint_id}",
        owner="",
        max_attempts=policy_for("callbacks", CALLBACK_POLICY).max_attempts,
        ttl=get_settings().job_ttl_seconds,
    )
    # run by the outcome script only when it disables: every worker's endpoint cache reloads
    bump_version(event, keys())
    return event


@app.task(name=DELIVER_TASK)
def deliver_callback(delivery_id: str) -> str | None:
    """Thin task: one attempt of one delivery."""
    with requeued_if_redis_fails():
        return run_delivery(delivery_id)
