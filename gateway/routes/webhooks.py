"""Inbound webhooks: verify, deduplicate, record and enqueue, 202; and the events they became.

Senders retry anything but a fast 2xx, so an authentic event of a type the source does not accept
is acknowledged (202) and recorded as ``ignored``, not bounced. Bodies we cannot read at all
(not JSON, no event type) are the sender's bug and get a 4xx it can see in its dashboard.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from core.statuses import EventStatus
from core.tracing import enter, export, exporting, ingest
from gateway.body import encodable, trace_headers
from gateway.deps import AdminDep
from gateway.errors import ApiError, responses
from gateway.metrics import count_webhook
from gateway.routes.jobs import DeliveryView
from gateway.webhooks.inbound import InboundWebhook, VerifiedWebhook
from gateway.webhooks.kept_headers import kept_headers
from handlers.webhooks import EventUnreadable, event_document, event_type_at, matches
from tasks.events import EventStore, NewEvent
from tasks.protocol import new_id

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
events_router = APIRouter(prefix="/v1/events", tags=["webhooks"])


class EventAccepted(BaseModel):
    """The 202 answer: our id for the event and where to follow it."""

    id: str
    status_url: str


class EventDuplicate(BaseModel):
    """The 200 answer to a delivery id seen within the dedup window: the original event's id."""

    id: str
    duplicate: bool = True
    status_url: str


class EventJob(BaseModel):
    """A job an event's route started."""

    id: str
    kind: str | None = None
    status: str | None = None


class EventView(BaseModel):
    """An inbound event, what its routes made, and how that went."""

    id: str
    source: str
    delivery_id: str | None = None
    type: str | None = None
    status: str
    reason: str | None = None
    received_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    content_type: str | None = None
    body_bytes: int = 0
    body: str | None = None
    routes: list[dict[str, Any]] | None = None
    jobs: list[EventJob] = []
    deliveries: list[DeliveryView] = []
    error: dict[str, Any] | None = None


def _events(request: Request) -> EventStore:
    store: EventStore = request.app.state.events
    return store


@router.post(
    "/{source}",
    status_code=202,
    response_model=EventAccepted,
    responses={
        200: {"model": EventDuplicate, "description": "a duplicate of an event already received"},
        **responses(400, 401, 404, 413, 415, 422, 503),
    },
)
async def receive_webhook(inbound: VerifiedWebhook, request: Request) -> Response:
    """Verify over the raw body, drop duplicates, record and enqueue; 202 once it is in Redis."""
    source = inbound.source.config.name
    try:
        response, outcome = await _record(inbound, request)
    except ApiError as exc:
        count_webhook(request, source, exc.code)
        raise
    except Exception:
        count_webhook(request, source, "error")  # Redis unavailable (503), or a bug (500)
        raise
    count_webhook(request, source, outcome)
    return response


async def _record(inbound: InboundWebhook, request: Request) -> tuple[Response, str]:
    """The answer to a verified webhook, and its outcome: accepted, ignored or duplicate."""
    config = inbound.source.config
    try:
        document = event_document(inbound.body, inbound.media)
    except EventUnreadable as exc:
        raise ApiError(exc.code, str(exc)) from None
    if config.type_header:
        event_type = (request.headers.get(config.type_header) or "").strip() or None
        where = f"the {config.type_header} header"
    else:
        event_type = event_type_at(document, config.type_path)
        where = f"the body's {config.type_path!r} field"
    if event_type is None:
        raise ApiError("missing_event_type", f"no event type in {where}")
    delivery_id = inbound.verified.delivery_id
    # a JSON string may hold a lone surrogate (an escaped \ud800); Redis stores text as UTF-8
    if not encodable(event_type) or (delivery_id is not None and not encodable(delivery_id)):
        raise ApiError("invalid_json", "the event's type or id is not valid Unicode")
    accepted = matches(event_type, config.events)
    started = time.time_ns()
    traceparent, tracestate = trace_headers(request)
    trace = ingest(traceparent, tracestate if traceparent else None)
    enter(trace)
    event = NewEvent(
        id=new_id(),
        source=config.name,
        delivery_id=delivery_id,
        type=event_type,
        content_type=inbound.media,
        body=inbound.body,
        status=EventStatus.RECEIVED if accepted else EventStatus.IGNORED,
        reason=None if accepted else "event type not accepted by this source",
        traceparent=trace.traceparent,
        tracestate=trace.state,
        headers=kept_headers(request.headers.items(), inbound.source.secrets, config.header),
    )
    original = await _events(request).record(event)
    if original is not None:
        body = {"id": original, "duplicate": True, "status_url": f"/v1/events/{original}"}
        return JSONResponse(body, status_code=200), "duplicate"
    if exporting():
        attributes = {"gateway.event_id": event.id, "gateway.source": config.name}
        export("POST /v1/webhooks", trace, started, kind="server", attributes=attributes)
    # written by hand like the job route's 202: the id is ours (hex and dashes), nothing to escape
    accepted_body = f'{{"id":"{event.id}","status_url":"/v1/events/{event.id}"}}'
    headers = {"traceresponse": trace.traceparent}
    answer = Response(accepted_body, 202, headers, media_type="application/json")
    return answer, "accepted" if accepted else "ignored"


@events_router.get("/{event_id}", response_model=EventView, responses=responses(401, 403, 404, 503))
async def get_event(
    event_id: str, request: Request, _: AdminDep, body: bool = False
) -> dict[str, Any]:
    """An event's status, matched routes, started jobs and deliveries (``?body=true``: raw body).

    An operator's view, like dead letters: every admin key sees every event.
    """
    view = await _events(request).view(event_id, with_body=body)
    if view is None:
        raise ApiError("event_not_found", f"no event {event_id}")
    return view
