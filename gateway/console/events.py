"""Console events: inbound webhooks newest first (by source, type, status), and one event's page.

The listing reads tasks/event_index.py's sorted sets: the source filter is an index; type (a glob,
as the sources file writes them) and status are checked on the records, at most MAX_SCAN of them a
request, and a page that stopped there says so and links to where it stopped. The event's page
shows what its record keeps: its headers as kept at ingest (credentials masked there,
gateway/webhooks/kept_headers.py, and again here with today's secrets), the body, the routes it
matched, the jobs they started and the deliveries made for it (forwards and endpoints).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from core.logs import MASK, Scrubber, redact_url
from core.settings import Settings
from core.statuses import EventStatus
from gateway.console.session import SessionDep
from gateway.console.web import PREFIX, ConsoleError, ConsoleRoute, render
from gateway.webhooks.kept_headers import masked
from gateway.webhooks.verifiers import InboundSource
from handlers.webhooks import is_json
from tasks.event_index import EventIndex
from tasks.events import EventStore
from tasks.paging import InvalidCursor

router = APIRouter(prefix=f"{PREFIX}/events", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50
MAX_SCAN = 1000  # records read per listing request when type or status filter them
MAX_TYPE = 200
STATUSES = tuple(status.value for status in EventStatus)
# what the event's page shows of its record; a record holds only the fields its history has set
EVENT_FIELDS = (
    "id", "source", "delivery_id", "type", "status", "reason", "received_at", "started_at",
    "finished_at", "attempts", "content_type", "body_bytes", "error",
)  # fmt: skip


def _sources(request: Request) -> dict[str, InboundSource]:
    sources: dict[str, InboundSource] = request.app.state.webhook_sources
    return sources


def _secrets(request: Request) -> list[str]:
    """Every secret this API knows: the sources' and its own settings' (API keys and the like)."""
    settings: Settings = request.app.state.settings
    values = [value for _, value in settings.secret_values()]
    for source in _sources(request).values():
        values.extend(source.secrets)
    return values


@router.get("")
async def events_page(
    request: Request,
    _: SessionDep,
    source: str = "",
    event_type: Annotated[str, Query(alias="type")] = "",
    status: str = "",
    cursor: str = "",
) -> Response:
    """The newest events, filtered; an "older" link pages on by cursor."""
    names = sorted(_sources(request))
    if source and source not in names:
        raise ConsoleError(400, f"No source {source}.")
    if status and status not in STATUSES:
        raise ConsoleError(400, f"No status {status}.")
    type_pattern = event_type.strip()
    if len(type_pattern) > MAX_TYPE:
        raise ConsoleError(400, "That type is too long.")
    settings: Settings = request.app.state.settings
    index = EventIndex(request.app.state.redis, request.app.state.keys, settings.job_ttl_seconds)
    try:
        page = await index.page(
            source=source or None,
            type_pattern=type_pattern or None,
            status=status or None,
            cursor=cursor or None,
            limit=PAGE_SIZE,
            max_scan=MAX_SCAN,
            now_us=time.time_ns() // 1000,
            sources=names,
        )
    except InvalidCursor:
        raise ConsoleError(400, "That page link is not valid; start again.") from None
    filters = {"source": source, "type": type_pattern, "status": status}
    query = {name: value for name, value in filters.items() if value}
    more = f"{PREFIX}/events?{urlencode({**query, 'cursor': page.cursor})}" if page.cursor else None
    context = {
        "page": page,
        "filters": filters,
        "sources": names,
        "statuses": STATUSES,
        "more": more,
        "first": not cursor,
        "first_url": f"{PREFIX}/events?{urlencode(query)}" if query else f"{PREFIX}/events",
        "page_size": PAGE_SIZE,
        "max_scan": MAX_SCAN,
    }
    return render(request, "events.html", context)


@router.get("/{event_id}")
async def event_page(event_id: str, request: Request, _: SessionDep) -> Response:
    """One event: facts, masked headers, body, routes, jobs started, deliveries."""
    store: EventStore = request.app.state.events
    event = await store.view(event_id, with_body=True)
    if event is None:
        raise ConsoleError(404, f"No event {event_id} (it may have expired).")
    secrets = _secrets(request)
    headers = event.get("headers")
    context = {
        "event": {name: event.get(name) for name in EVENT_FIELDS},
        "headers": masked(headers, secrets) if isinstance(headers, dict) else None,
        "body": _shown_body(event.get("body") or "", event.get("content_type") or "", secrets),
        "routes": [_route(route) for route in event.get("routes") or []],
        "jobs": event["jobs"],
        "deliveries": [_delivery(d) for d in event["deliveries"]],
    }
    return render(request, "event.html", context)


def _shown_body(text: str, content_type: str, secrets: list[str]) -> dict[str, Any]:
    """The body as shown: indented when it is JSON, else the text; secret values masked."""
    kind = "text"
    if is_json(content_type):
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=False)
            kind = "json"
        except (ValueError, RecursionError):
            pass
    scrub = Scrubber(secrets)
    for secret in scrub.secrets:  # the values only: URLs in a body are the sender's data
        text = text.replace(secret, MASK)
    return {"text": text, "kind": kind}


def _route(route: dict[str, Any]) -> dict[str, Any]:
    """One matched route's result, every field the page reads present."""
    return {
        "route": route.get("route"),
        "events": route.get("events") or [],
        "job": route.get("job"),
        "deliveries": route.get("deliveries") or [],
        "error": route.get("error"),
    }


def _delivery(delivery: dict[str, Any]) -> dict[str, Any]:
    """A delivery as its row shows it: where (credentials in the URL dropped), how it went."""
    attempts = delivery.get("attempts") or []
    last = attempts[-1] if attempts else {}
    return {
        **delivery,
        "url": redact_url(delivery.get("url") or ""),
        "attempt_count": len(attempts),
        "last_error": last.get("error"),
        "last_status_code": last.get("status_code"),
    }
