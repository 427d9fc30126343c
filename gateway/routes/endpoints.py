"""Endpoints: subscribers an operator registers at run time (admin keys only).

Each is offered every event whose type and source it asks for (tasks/endpoints.py), as one signed
delivery on the callbacks machinery. The secret is shown when it is made: on creation and on
rotation. Lists are paged with an opaque cursor: endpoints oldest first, an endpoint's deliveries
newest first.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from core.settings import Settings
from core.statuses import EndpointStatus
from gateway.deps import AdminDep
from gateway.errors import ApiError, responses
from gateway.routes.dead_letters import Replayed
from gateway.routes.endpoint_models import (
    DeliveryPage,
    EndpointCreated,
    EndpointIn,
    EndpointPage,
    EndpointPatch,
    EndpointView,
    Recover,
    Rotate,
    SecretRotated,
)
from handlers.outbound import UrlRejected, check_url
from tasks.endpoint_store import EndpointStore
from tasks.paging import InvalidCursor

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


def _store(request: Request) -> EndpointStore:
    store: EndpointStore = request.app.state.endpoints
    return store


async def _check_url(url: str, request: Request) -> None:
    """400 unless ``url`` is one the outbound guard would dial (checked again at connect time)."""
    try:
        await check_url(url, request.app.state.outbound_policy)
    except UrlRejected as exc:
        raise ApiError(exc.code, f"url refused: {exc.detail}") from exc


def _found(view: dict[str, Any] | None, endpoint_id: str) -> dict[str, Any]:
    if view is None:
        raise ApiError("endpoint_not_found", f"no endpoint {endpoint_id}")
    return view


# what tasks/paging.py hands out: "<score>:<member>"
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,20}:[!-~]{1,180}$")]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post(
    "",
    status_code=201,
    response_model=EndpointCreated,
    responses=responses(400, 401, 403, 422, 503),
)
async def create_endpoint(body: EndpointIn, request: Request, _: AdminDep) -> dict[str, Any]:
    """Register an endpoint; the answer holds its secret, which is not shown again."""
    await _check_url(body.url, request)
    return await _store(request).create(body.model_dump())


@router.get("", response_model=EndpointPage, responses=responses(401, 403, 422, 503))
async def list_endpoints(
    request: Request, _: AdminDep, cursor: Cursor = None, limit: Limit = 100
) -> dict[str, Any]:
    """Endpoints, oldest first, ``limit`` a page."""
    try:
        items, following = await _store(request).page(limit=limit, cursor=cursor)
    except InvalidCursor:
        raise ApiError("validation_error", "cursor is not one this API handed out") from None
    return {"items": items, "next_cursor": following}


@router.get("/{endpoint_id}", response_model=EndpointView, responses=responses(401, 403, 404, 503))
async def get_endpoint(endpoint_id: str, request: Request, _: AdminDep) -> dict[str, Any]:
    """An endpoint: its subscription, limits, status, failure streak and last outcomes."""
    return _found(await _store(request).get(endpoint_id), endpoint_id)


@router.patch(
    "/{endpoint_id}",
    response_model=EndpointView,
    responses=responses(400, 401, 403, 404, 422, 503),
)
async def update_endpoint(
    endpoint_id: str, body: EndpointPatch, request: Request, _: AdminDep
) -> dict[str, Any]:
    """Change the fields given; the status changes through enable and disable."""
    changes = body.model_dump(exclude_unset=True)
    if "url" in changes:
        await _check_url(changes["url"], request)
    store = _store(request)
    if not changes:
        return _found(await store.get(endpoint_id), endpoint_id)
    return _found(await store.update(endpoint_id, changes), endpoint_id)


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 403, 404, 503),
)
async def delete_endpoint(endpoint_id: str, request: Request, _: AdminDep) -> Response:
    """Remove an endpoint: nothing more is offered to it."""
    if not await _store(request).delete(endpoint_id):
        raise ApiError("endpoint_not_found", f"no endpoint {endpoint_id}")
    return Response(status_code=204)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses=responses(401, 403, 404, 422, 503),
)
async def endpoint_deliveries(
    endpoint_id: str, request: Request, _: AdminDep, cursor: Cursor = None, limit: Limit = 100
) -> dict[str, Any]:
    """Deliveries made for the endpoint, newest first, each with its attempts."""
    store = _store(request)
    _found(await store.get(endpoint_id), endpoint_id)
    try:
        items, following = await store.deliveries(endpoint_id, limit=limit, cursor=cursor)
    except InvalidCursor:
        raise ApiError("validation_error", "cursor is not one this API handed out") from None
    return {"items": items, "next_cursor": following}


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=SecretRotated,
    responses=responses(400, 401, 403, 404, 422, 503),
)
async def rotate_secret(
    endpoint_id: str, request: Request, _: AdminDep, body: Rotate | None = None
) -> dict[str, Any]:
    """A new secret; the old one keeps signing too until the grace ends (default 24 h)."""
    settings: Settings = request.app.state.settings
    grace = settings.endpoint_secret_grace_seconds
    if body is not None and body.grace_seconds is not None:
        grace = body.grace_seconds
    return _found(await _store(request).rotate(endpoint_id, grace), endpoint_id)


@router.post(
    "/{endpoint_id}/enable", response_model=EndpointView, responses=responses(401, 403, 404, 503)
)
async def enable_endpoint(endpoint_id: str, request: Request, _: AdminDep) -> dict[str, Any]:
    """Send to it again, from a clean slate (no failure streak, no reason); what it held goes."""
    view = await _store(request).set_status(endpoint_id, EndpointStatus.ENABLED)
    return _found(view, endpoint_id)


@router.post(
    "/{endpoint_id}/disable", response_model=EndpointView, responses=responses(401, 403, 404, 503)
)
async def disable_endpoint(endpoint_id: str, request: Request, _: AdminDep) -> dict[str, Any]:
    """Stop offering it events until it is enabled again."""
    view = await _store(request).set_status(endpoint_id, EndpointStatus.DISABLED)
    return _found(view, endpoint_id)


@router.post(
    "/{endpoint_id}/recover",
    status_code=202,
    response_model=Replayed,
    responses=responses(400, 401, 403, 404, 422, 503),
)
async def recover_endpoint(
    endpoint_id: str, body: Recover, request: Request, _: AdminDep
) -> Replayed:
    """Send again every failed or dead delivery to it since ``since``, with the same webhook-id."""
    store = _store(request)
    _found(await store.get(endpoint_id), endpoint_id)
    ids = await store.recover(endpoint_id, body.since.timestamp(), body.limit)
    return Replayed(replayed=len(ids), ids=ids)
