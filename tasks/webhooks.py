"""The webhooks queue: route one recorded event to its destinations, exactly once per event.

What an event starts is decided by plain functions (tasks/routing.py); this module claims the
event, carries the plan out and records the result.

At least once in, once out: the event is claimed atomically (a final event's message is dropped);
jobs are submitted with an idempotency key made from the event id and the route, and forwarded
deliveries get ids made the same way; the deliveries and the event's final status are written in
one transaction, guarded by WATCH, so a message delivered twice makes them once.

Beside its TOML routes, every event a source accepts is offered to the endpoints that subscribed
to it (tasks/endpoints.py), in the same transaction. An event no route matches but an endpoint
takes is ``routed``.

One piece (~260 lines): the claim, carrying the plan out and the result's write share one
WATCH/MULTI transaction per event; the planning itself is tasks/routing.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from pydantic import ValidationError

from core import logs
from core.configs import outbound_policy
from core.retry import default_policy, policy_for
from core.settings import get_settings
from core.sources import LoadedSource, load_sources
from core.statuses import EVENT_FINAL, EventStatus
from core.tracing import current_fields, from_record, traced
from core.validation import error_record, summary
from handlers.webhooks import EventUnreadable, event_document
from tasks.app import app
from tasks.claims import EVENT_CLAIM, claim_sync
from tasks.deliveries import CALLBACK_POLICY, add_delivery
from tasks.endpoints import Endpoint, offer
from tasks.events import PROCESS_TASK, decode, process_message
from tasks.protocol import dumps
from tasks.queues import WEBHOOKS
from tasks.routing import (
    Failure,
    JobRequest,
    Plan,
    RouteResult,
    event_body,
    outcome,
    plan_event,
)
from tasks.runtime import endpoints_at, keys, requeued_if_redis_fails, worker_redis
from tasks.store import now_iso
from tasks.submit import submit_job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # processing itself (Redis hiccups); what it starts has its own retry policies


@lru_cache
def sources() -> dict[str, LoadedSource]:
    """This worker's sources (routes only: verifying is the API's job, so no secrets are read)."""
    settings = get_settings()
    return load_sources(
        settings.webhook_sources_file, outbound_policy(settings), with_secrets=False
    )


def process_event(event_id: str) -> str | None:
    """Route event ``event_id`` once; returns the status it ended in (None if not processable)."""
    r, k = worker_redis(), keys()
    ttl = get_settings().job_ttl_seconds
    fields = claim_sync(r, EVENT_CLAIM, k.event(event_id), now_iso(), ttl)
    if fields is None:
        log.info("event %s is unknown or already final; message dropped", event_id)
        return None
    event = decode(fields)
    # processing is a span of the event's trace: the jobs it submits and its forwards join it
    span = {"gateway.event_id": event_id, "gateway.source": event.get("source") or ""}
    with traced(from_record(event), "event.process", kind="consumer", attributes=span):
        try:
            return _route(event)
        except Exception as exc:  # Redis trouble, or a bug: try again later, then give up visibly
            log.exception("event %s could not be processed", event_id)
            return _retry_or_fail(event, exc)


@dataclass(frozen=True)
class Offering:
    """The event as its endpoints are offered it; which ones want it is read at the final write."""

    event: dict[str, Any]
    source: str
    plan: Plan

    def wanted(self, version: bytes | str | None) -> tuple[Endpoint, ...]:
        """The endpoints (as of ``version``) that subscribed to this event."""
        kind = self.event["type"] or ""
        return tuple(e for e in endpoints_at(version) if e.wants(kind, self.source))

    def body(self) -> dict[str, Any] | None:
        """What each endpoint is sent: the forwards' body (None: unreadable)."""
        if self.plan.body is not None:
            return self.plan.body
        try:
            document = event_document(self.event["body"], self.event.get("content_type") or "")
        except EventUnreadable:  # the API checked; only a changed record could get here
            return None
        return event_body(self.event, self.source, document)


def _route(event: dict[str, Any]) -> str:
    source = sources().get(event["source"])
    plan = plan_event(event, source)
    offering = Offering(event, source.config.name, plan) if source is not None else None
    if plan.status != EventStatus.ROUTED:
        error = _failure(plan.error)
        return _finish(event, plan.status, reason=plan.reason, error=error, offering=offering)
    result = outcome(plan, [_submit(job) for job in plan.jobs])
    routes = [_record(route) for route in result.routes]
    error = _failure(result.error)
    return _finish(event, result.status, routes=routes, plan=plan, error=error, offering=offering)


def _submit(job: JobRequest) -> str | Failure:
    """Submit one planned job; a refusal (unknown kind, invalid payload) fails only its route."""
    try:
        return submit_job(
            job.kind,
            job.payload,
            owner=job.owner,
            callback_url=job.callback_url,
            idempotency_key=job.idempotency_key,
        )
    except ValidationError as exc:
        return Failure("job_refused", summary(exc, "payload"))
    except KeyError as exc:
        return Failure("job_refused", str(exc))


def _record(result: RouteResult) -> dict[str, Any]:
    """One route's result as the event's ``routes`` field shows it."""
    record: dict[str, Any] = {"route": result.number, "events": result.events}
    if result.deliveries:
        record["deliveries"] = result.deliveries
    if result.job is not None:
        record["job"] = result.job
    if result.error is not None:
        record["error"] = _failure(result.error)
    return record


def _failure(failure: Failure | None) -> dict[str, str] | None:
    return error_record(failure.code, failure.detail) if failure else None


def _finish(
    event: dict[str, Any],
    status: EventStatus,
    *,
    reason: str | None = None,
    routes: list[dict[str, Any]] | None = None,
    plan: Plan | None = None,
    error: dict[str, str] | None = None,
    offering: Offering | None = None,
) -> str:
    """Write the event's outcome, its ``plan``'s and endpoints' deliveries in one transaction.

    The endpoints' version is watched with the event: a change before EXEC makes it try again
    with the endpoints as they are then. An event no route took but an endpoint did is routed.
    """
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
    forwards = plan.forwards if plan else []
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key, k.endpoints_version)  # type: ignore[no-untyped-call]
                raw = pipe.hget(key, "status")
                current = raw.decode() if isinstance(raw, bytes) else raw
                if current is None or current in EVENT_FINAL:
                    pipe.reset()
                    return current or status
                wanted: tuple[Endpoint, ...] = ()
                body = None
                if offering is not None:
                    wanted = offering.wanted(pipe.get(k.endpoints_version))
                    body = offering.body() if wanted else None
                ended, written = status, fields
                if status == EventStatus.IGNORED and wanted and body is not None:
                    ended = EventStatus.ROUTED
                    written = {**fields, "status": ended, "reason": ""}
                pipe.multi()
                for forward in forwards:
                    assert plan is not None and plan.body is not None
                    add_delivery(
                        pipe,
                        k,
                        url=forward.url,
                        body=plan.body,
                        parent=plan.parent,
                        owner=plan.owner,
                        max_attempts=max_attempts,
                        ttl=ttl,
                        delivery_id=forward.delivery_id,
                        **current_fields(),
                    )
                if wanted and body is not None:
                    offer(
                        pipe,
                        k,
                        wanted,
                        event_type=event["type"] or "",
                        source=event["source"],
                        body=body,
                        parent=f"event:{event['id']}",
                        owner=f"webhook:{event['source']}",
                        max_attempts=max_attempts,
                        ttl=ttl,
                        **current_fields(),
                    )
                pipe.hset(key, mapping=written)
                pipe.expire(key, ttl)
                pipe.execute()
                return ended
            except redis.WatchError:
                continue  # another run touched the event: look again


def _retry_or_fail(event: dict[str, Any], exc: Exception) -> str:
    attempt = int(event.get("attempts") or 1)
    error = error_record("processing_error", type(exc).__name__)
    if attempt >= MAX_ATTEMPTS:
        return _finish(event, EventStatus.FAILED, error=error)
    due = time.time() + default_policy().delay(attempt)
    message = process_message(event["id"])
    with worker_redis().pipeline(transaction=True) as pipe:
        retrying: dict[Any, str] = {"status": EventStatus.RECEIVED, "error": dumps(error)}
        pipe.hset(keys().event(event["id"]), mapping=retrying)
        pipe.zadd(keys().schedule, {f"{WEBHOOKS}\n{message}": due})
        pipe.execute()
    return EventStatus.RECEIVED


@app.task(name=PROCESS_TASK)  # type: ignore[untyped-decorator]
def process(event_id: str) -> str | None:
    """Thin task: route one inbound event."""
    logs.bind(event_id=event_id, queue=WEBHOOKS)
    with requeued_if_redis_fails():
        return process_event(event_id)
