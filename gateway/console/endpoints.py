"""Console endpoints: health, circuit state and limits of each, its recent deliveries, and the
operator's actions (enable, disable, rotate the secret, recover since a time).

Every action is a POST form with the session's CSRF token and calls the same EndpointStore
method the admin API does (tasks/endpoint_store.py): one implementation of each change. The
limiter state lives in its own keys and is only read here. A rotated secret is shown once, on
the answer to the POST (no-store, like every console page), and never again: the endpoint page
does not show secrets.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from core.settings import Settings
from core.statuses import EndpointStatus
from gateway.console.session import CsrfDep, SessionDep
from gateway.console.web import PREFIX, ConsoleError, ConsoleRoute, form_time, render
from tasks.endpoint_store import EndpointStore
from tasks.paging import InvalidCursor

router = APIRouter(prefix=f"{PREFIX}/endpoints", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 100
DELIVERIES_SHOWN = 50
RECOVER_LIMIT = 10_000  # the most the admin API's recover accepts too
# what an action's redirect may announce on the endpoint page (nothing else from the URL is shown)
DONE = {"enabled": "Enabled: deliveries held while it was disabled are on their way.",
        "disabled": "Disabled: nothing is sent to it until it is enabled again."}  # fmt: skip


def _store(request: Request) -> EndpointStore:
    store: EndpointStore = request.app.state.endpoints
    return store


def circuit(view: dict[str, Any], state: dict[str, Any]) -> str:
    """The endpoint's circuit as an operator says it: closed, open (probing) or disabled."""
    if view["status"] == EndpointStatus.DISABLED:
        return "disabled"
    if view["status"] == EndpointStatus.PAUSED:
        if state["probe_in"] is None:
            return "half-open: the next delivery is the probe"
        return f"open: next probe in {state['probe_in']:.0f} s"
    return "closed"


async def _with_state(request: Request, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    states = await _store(request).limit_states([view["id"] for view in views])
    return [
        {**view, "limits": states[view["id"]], "circuit": circuit(view, states[view["id"]])}
        for view in views
    ]


async def _found(request: Request, endpoint_id: str) -> dict[str, Any]:
    view = await _store(request).get(endpoint_id)
    if view is None:
        raise ConsoleError(404, f"No endpoint {endpoint_id}.")
    return view


@router.get("")
async def endpoints_page(request: Request, _: SessionDep, cursor: str = "") -> Response:
    """Every endpoint, oldest first, with its health, circuit and limits."""
    try:
        views, following = await _store(request).page(limit=PAGE_SIZE, cursor=cursor or None)
    except InvalidCursor:
        raise ConsoleError(400, "That page link is not one the console made.") from None
    more = f"?{urlencode({'cursor': following})}" if following else None
    context = {"endpoints": await _with_state(request, views), "more": more}
    return render(request, "endpoints.html", context)


@router.get("/{endpoint_id}")
async def endpoint_page(
    endpoint_id: str, request: Request, _: SessionDep, done: str = "", cursor: str = ""
) -> Response:
    """One endpoint: subscription, health, circuit, limits, actions, recent deliveries."""
    (view,) = await _with_state(request, [await _found(request, endpoint_id)])
    try:
        deliveries, following = await _store(request).deliveries(
            endpoint_id, limit=DELIVERIES_SHOWN, cursor=cursor or None
        )
    except InvalidCursor:
        raise ConsoleError(400, "That page link is not one the console made.") from None
    settings: Settings = request.app.state.settings
    context = {
        "endpoint": view,
        "deliveries": deliveries,
        "older": f"?{urlencode({'cursor': following})}" if following else None,
        "done": DONE.get(done),
        "grace": settings.endpoint_secret_grace_seconds,
    }
    return render(request, "endpoint.html", context)


async def _set_status(request: Request, endpoint_id: str, status: EndpointStatus) -> Response:
    if await _store(request).set_status(endpoint_id, status) is None:
        raise ConsoleError(404, f"No endpoint {endpoint_id}.")
    return RedirectResponse(f"{PREFIX}/endpoints/{endpoint_id}?done={status}", 303)


@router.post("/{endpoint_id}/enable")
async def enable(endpoint_id: str, request: Request, _: CsrfDep) -> Response:
    """Send to it again from a clean slate; what it held while disabled goes."""
    return await _set_status(request, endpoint_id, EndpointStatus.ENABLED)


@router.post("/{endpoint_id}/disable")
async def disable(endpoint_id: str, request: Request, _: CsrfDep) -> Response:
    """Stop offering it events until it is enabled again."""
    return await _set_status(request, endpoint_id, EndpointStatus.DISABLED)


@router.post("/{endpoint_id}/rotate-secret")
async def rotate_secret(endpoint_id: str, request: Request, _: CsrfDep) -> Response:
    """A new secret, shown on this answer only; the old one signs too until the grace ends."""
    settings: Settings = request.app.state.settings
    rotated = await _store(request).rotate(endpoint_id, settings.endpoint_secret_grace_seconds)
    if rotated is None:
        raise ConsoleError(404, f"No endpoint {endpoint_id}.")
    context = {"endpoint_id": endpoint_id, "rotated": rotated, "recovered": None, "since": ""}
    return render(request, "endpoint_done.html", context)


@router.post("/{endpoint_id}/recover")
async def recover(
    endpoint_id: str, request: Request, _: CsrfDep, since: Annotated[str, Form()] = ""
) -> Response:
    """Send again every failed or dead delivery to it offered since ``since`` (same ids)."""
    start = form_time(since, "since")
    if start is None:
        raise ConsoleError(400, "Give the time to recover from.")
    await _found(request, endpoint_id)
    ids = await _store(request).recover(endpoint_id, start, RECOVER_LIMIT)
    context = {"endpoint_id": endpoint_id, "rotated": None, "recovered": ids, "since": since}
    return render(request, "endpoint_done.html", context)
