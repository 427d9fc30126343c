"""The webhooks queue: route one recorded event to its destinations, exactly once per event.

At least once in, once out: the event is claimed atomically (a final event's message is dropped);
jobs are submitted with an idempotency key made from the event id and the route, and forwarded
deliveries get ids made the same way; the deliveries and the event's final status are written in
one transaction, guarded by WATCH, so a message delivered twice makes them once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import lru_cache
from typing import Any

import redis
from pydantic import ValidationError

from core.configs import outbound_policy
from core.retry import default_policy, policy_for
from core.settings import get_settings
from core.sources import LoadedSource, load_sources
from handlers.webhooks import EventUnreadable, event_document, job_payload, matching_routes
from tasks.app import app
from tasks.deliveries import CALLBACK_POLICY, add_delivery
from tasks.events import FINAL, PROCESS_TASK, decode, process_message
from tasks.protocol import dumps
from tasks.queues import WEBHOOKS
from tasks.runtime import keys, requeued_if_redis_fails, worker_redis
from tasks.store import now_iso
from tasks.submit import submit_job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # processing itself (Redis hiccups); what it starts has its own retry policies

_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'routed' or status == 'ignored' or status == 'failed' then
  return false
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""


@lru_cache
def sources() -> dict[str, LoadedSource]:
    """This worker's sources (routes only: verifying is the API's job, so no secrets are read)."""
    settings = get_settings()
    return load_sources(
        settings.webhook_sources_file, outbound_policy(settings), with_secrets=False
    )


def delivery_id(event_id: str, route: int, url: str) -> str:
    """The forwarded delivery's id (its webhook-id): the same whenever this event is processed."""
    digest = hashlib.sha256(f"{event_id}\n{route}\n{url}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def process_event(event_id: str) -> str | None:
    """Route event ``event_id`` once; returns the status it ended in (None if not processable)."""
    r, k = worker_redis(), keys()
    ttl = get_settings().job_ttl_seconds
    raw = r.eval(_CLAIM, 1, k.event(event_id), now_iso(), ttl)
    if not raw:
        log.info("event %s is unknown or already final; message dropped", event_id)
        return None
    event = decode(dict(zip(raw[::2], raw[1::2], strict=True)))
    try:
        return _route(event)
    except Exception as exc:  # Redis trouble, or a bug: try again later, then give up visibly
        log.exception("event %s could not be processed", event_id)
        return _retry_or_fail(event, exc)


def _route(event: dict[str, Any]) -> str:
    source = sources().get(event["source"])
    if source is None:
        return _finish(
            event, "failed", error=_error("unknown_source", "source no longer configured")
        )
    config = source.config
    indexes = matching_routes(event["type"] or "", [route.events for route in config.routes])
    if not indexes:
        return _finish(event, "ignored", reason="no route matches this event type")
    try:
        document = event_document(event["body"], event.get("content_type") or "")
    except EventUnreadable as exc:  # the API checked; only a changed record could get here
        return _finish(event, "failed", error=_error("invalid_json", str(exc)))
    outcomes: list[dict[str, Any]] = []
    forwards: list[tuple[str, str]] = []
    for index in indexes:
        route = config.routes[index]
        outcome: dict[str, Any] = {"route": index + 1, "events": route.events}
        if route.forward:
            ids = [delivery_id(event["id"], index, url) for url in route.forward]
            forwards.extend(zip(ids, route.forward, strict=True))
            outcome["deliveries"] = ids
        if route.job is not None:
            payload = job_payload(route.job.payload, route.job.event_key, document)
            try:
                outcome["job"] = submit_job(
                    route.job.kind,
                    payload,
                    owner=f"webhook:{config.name}",
                    callback_url=route.job.callback_url,
                    idempotency_key=f"event:{event['id']}:{index}",
                )
            except (KeyError, ValidationError) as exc:
                outcome["error"] = _error("job_refused", _short(exc))
        outcomes.append(outcome)
    failed = [o for o in outcomes if "error" in o]
    body = {
        "type": event["type"],
        "timestamp": event.get("received_at"),
        "source": config.name,
        "event_id": event["id"],
        "data": document,
    }
    error = _error("route_failed", f"{len(failed)} route(s) failed") if failed else None
    return _finish(
        event, "failed" if failed else "routed", routes=outcomes, forwards=forwards, body=body,
        error=error,
    )  # fmt: skip


def _finish(
    event: dict[str, Any],
    status: str,
    *,
    reason: str | None = None,
    routes: list[dict[str, Any]] | None = None,
    forwards: list[tuple[str, str]] | None = None,
    body: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
) -> str:
    """Write the event's outcome and its deliveries in one transaction, once."""
    r, k = worker_redis(), keys()
    key = k.event(event["id"])
    ttl = get_settings().job_ttl_seconds
    jobs = [o["job"] for o in routes or [] if "job" in o]
    fields: dict[Any, str] = {
        "status": status,
        "finished_at": now_iso(),
        "reason": reason or "",
        "routes": dumps(routes) if routes is not None else "",
        "jobs": dumps(jobs),
        "error": dumps(error) if error else "",
    }
    max_attempts = policy_for("callbacks", CALLBACK_POLICY).max_attempts
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                raw = pipe.hget(key, "status")
                current = raw.decode() if isinstance(raw, bytes) else raw
                if current is None or current in FINAL:
                    pipe.reset()
                    return current or status
                pipe.multi()
                for msg_id, url in forwards or []:
                    assert body is not None
                    add_delivery(
                        pipe,
                        k,
                        url=url,
                        body=body,
                        parent=f"event:{event['id']}",
                        owner=f"webhook:{event['source']}",
                        max_attempts=max_attempts,
                        ttl=ttl,
                        delivery_id=msg_id,
                    )
                pipe.hset(key, mapping=fields)
                pipe.expire(key, ttl)
                pipe.execute()
                return status
            except redis.WatchError:
                continue  # another run touched the event: look again


def _retry_or_fail(event: dict[str, Any], exc: Exception) -> str:
    attempt = int(event.get("attempts") or 1)
    error = _error("processing_error", type(exc).__name__)
    if attempt >= MAX_ATTEMPTS:
        return _finish(event, "failed", error=error)
    due = time.time() + default_policy().delay(attempt)
    message = process_message(event["id"])
    with worker_redis().pipeline(transaction=True) as pipe:
        pipe.hset(keys().event(event["id"]), mapping={"status": "received", "error": dumps(error)})
        pipe.zadd(keys().schedule, {f"{WEBHOOKS}\n{message}": due})
        pipe.execute()
    return "received"


def _error(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "detail": detail[:2000]}


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "payload"
        return f"{loc}: {first['msg']}"
    return str(exc)


@app.task(name=PROCESS_TASK)  # type: ignore[untyped-decorator]
def process(event_id: str) -> str | None:
    """Thin task: route one inbound event."""
    with requeued_if_redis_fails():
        return process_event(event_id)
