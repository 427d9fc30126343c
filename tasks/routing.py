"""Webhook routing as plain functions: which routes an event matches and what each one starts.

The webhooks task (tasks/webhooks.py) claims an event, asks ``plan_event`` what to do, carries
the plan out (jobs submitted; deliveries and the outcome written in one transaction) and records
what ``outcome`` makes of the submissions. Nothing here touches Redis or Celery. Ids derive from
the event id and the route, so processing an event twice plans the same deliveries and jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.sources import LoadedSource
from core.statuses import EventStatus
from handlers.webhooks import EventUnreadable, event_document, job_payload, matching_routes


@dataclass(frozen=True)
class Failure:
    """Why an event or one of its routes failed: a stable code and a human detail."""

    code: str
    detail: str


@dataclass(frozen=True)
class Forward:
    """One delivery of the event to a route's URL; its id is its ``webhook-id``."""

    delivery_id: str
    url: str


@dataclass(frozen=True)
class JobRequest:
    """One job a route starts, as ``tasks.submit.submit_job`` takes it."""

    kind: str
    payload: dict[str, Any]
    owner: str
    callback_url: str | None
    idempotency_key: str


@dataclass(frozen=True)
class RoutePlan:
    """What one matching route does with the event."""

    number: int  # 1-based, as the event's record and the README count routes
    events: list[str]
    forwards: list[Forward]
    job: JobRequest | None


@dataclass(frozen=True)
class Plan:
    """What routing one event takes: a final status now, or routes to carry out (status routed).

    ``body`` is what every forward delivers; ``parent`` and ``owner`` go on each delivery.
    """

    status: EventStatus
    reason: str | None = None
    error: Failure | None = None
    routes: tuple[RoutePlan, ...] = ()
    body: dict[str, Any] | None = None
    parent: str = ""
    owner: str = ""

    @property
    def forwards(self) -> list[Forward]:
        """Every delivery to add, in route order."""
        return [forward for route in self.routes for forward in route.forwards]

    @property
    def jobs(self) -> list[JobRequest]:
        """Every job to submit, in route order."""
        return [route.job for route in self.routes if route.job is not None]


@dataclass(frozen=True)
class RouteResult:
    """One matching route as recorded on the event: its deliveries, its job or why it failed."""

    number: int
    events: list[str]
    deliveries: list[str]
    job: str | None = None
    error: Failure | None = None


@dataclass(frozen=True)
class Outcome:
    """The event's final status once the plan's jobs were submitted, and its routes' results."""

    status: EventStatus
    routes: list[RouteResult]
    error: Failure | None


def delivery_id(event_id: str, route: int, url: str) -> str:
    """The forwarded delivery's id (its webhook-id): the same whenever this event is processed."""
    digest = hashlib.sha256(f"{event_id}\n{route}\n{url}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def event_body(event: Mapping[str, Any], source: str, document: Any) -> dict[str, Any]:
    """What a forward or an endpoint is sent for ``event``: its type, source, id and document."""
    return {
        "type": event["type"],
        "timestamp": event.get("received_at"),
        "source": source,
        "event_id": event["id"],
        "data": document,
    }


def plan_event(event: Mapping[str, Any], source: LoadedSource | None) -> Plan:
    """What to do with the recorded ``event`` from ``source`` (None: no longer configured)."""
    if source is None:
        failure = Failure("unknown_source", "source no longer configured")
        return Plan(EventStatus.FAILED, error=failure)
    config = source.config
    indexes = matching_routes(event["type"] or "", [route.events for route in config.routes])
    if not indexes:
        return Plan(EventStatus.IGNORED, reason="no route matches this event type")
    try:
        document = event_document(event["body"], event.get("content_type") or "")
    except EventUnreadable as exc:  # the API checked; only a changed record could get here
        return Plan(EventStatus.FAILED, error=Failure(exc.code, str(exc)))
    owner = f"webhook:{config.name}"
    routes = []
    for index in indexes:
        route = config.routes[index]
        job = None
        if route.job is not None:
            job = JobRequest(
                kind=route.job.kind,
                payload=job_payload(route.job.payload, route.job.event_key, document),
                owner=owner,
                callback_url=route.job.callback_url,
                idempotency_key=f"event:{event['id']}:{index}",
            )
        forwards = [Forward(delivery_id(event["id"], index, url), url) for url in route.forward]
        routes.append(RoutePlan(index + 1, route.events, forwards, job))
    body = event_body(event, config.name, document)
    parent = f"event:{event['id']}"
    return Plan(EventStatus.ROUTED, routes=tuple(routes), body=body, parent=parent, owner=owner)


def outcome(plan: Plan, jobs: Sequence[str | Failure]) -> Outcome:
    """The result of a routed ``plan`` given its jobs' ids or refusals, in route order."""
    submitted = iter(jobs)
    results = []
    for route in plan.routes:
        job = next(submitted) if route.job is not None else None
        results.append(
            RouteResult(
                route.number,
                route.events,
                [forward.delivery_id for forward in route.forwards],
                job=job if isinstance(job, str) else None,
                error=job if isinstance(job, Failure) else None,
            )
        )
    failed = sum(result.error is not None for result in results)
    if failed:
        failure = Failure("route_failed", f"{failed} route(s) failed")
        return Outcome(EventStatus.FAILED, results, failure)
    return Outcome(EventStatus.ROUTED, results, None)
