"""Dead letters: list what ended without success, replay one, or replay a kind over a time range.

An operator's view: every admin key (ADMIN_API_KEYS) sees every dead letter (jobs stay private to
their caller in /v1/jobs). Replay starts the job or delivery again with the same id, so receivers
recognise it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, BeforeValidator, Field

from gateway.deps import AdminDep
from gateway.errors import ApiError, responses
from tasks.dead_letters import DeadLetters

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


def _timestamp_text(value: object) -> object:
    """Only ISO 8601 text: pydantic would also read a number as epoch seconds, which the
    schema (a date-time string) does not promise."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    elif not isinstance(value, int | float):
        return value
    raise ValueError("must be an ISO 8601 timestamp, e.g. 2026-01-31T12:00:00Z")


IsoTime = Annotated[datetime, BeforeValidator(_timestamp_text)]


class DeadLetter(BaseModel):
    """A job or delivery that ended without success."""

    id: str
    type: str
    kind: str | None
    status: str | None
    attempts: int
    failed_at: str | None
    error: Any = None
    payload: Any = None
    ref: str


class BulkReplay(BaseModel):
    """Which dead letters to replay: a kind (job kind or "callback") and a time range."""

    kind: str | None = None
    since: IsoTime | None = None
    until: IsoTime | None = None
    limit: int = Field(1000, ge=1, le=10_000)


class Replayed(BaseModel):
    """What a replay started."""

    replayed: int
    ids: list[str]


def _store(request: Request) -> DeadLetters:
    store: DeadLetters = request.app.state.dead_letters
    return store


def _epoch(moment: datetime | None, default: float) -> float:
    return moment.timestamp() if moment is not None else default


@router.get("", response_model=list[DeadLetter], responses=responses(401, 403, 422, 503))
async def list_dead_letters(
    request: Request,
    _: AdminDep,
    kind: str | None = None,
    since: IsoTime | None = None,
    until: IsoTime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Dead letters, oldest first; filter by kind and by time of failure."""
    return await _store(request).list(
        kind=kind, since=_epoch(since, 0), until=_epoch(until, float("inf")), limit=limit
    )


@router.post(
    "/{dead_letter_id}/replay",
    status_code=202,
    response_model=Replayed,
    responses=responses(401, 403, 404, 503),
)
async def replay_one(dead_letter_id: str, request: Request, _: AdminDep) -> Replayed:
    """Start one dead letter again ('job:<id>' or 'delivery:<id>')."""
    if not await _store(request).replay(dead_letter_id):
        raise ApiError("dead_letter_not_found", f"no dead letter {dead_letter_id}")
    return Replayed(replayed=1, ids=[dead_letter_id])


@router.post(
    "/replay",
    status_code=202,
    response_model=Replayed,
    responses=responses(400, 401, 403, 422, 503),
)
async def replay_many(body: BulkReplay, request: Request, _: AdminDep) -> Replayed:
    """Start again every dead letter of a kind in a time range."""
    store = _store(request)
    entries = await store.list(
        kind=body.kind,
        since=_epoch(body.since, 0),
        until=_epoch(body.until, float("inf")),
        limit=body.limit,
    )
    ids = [entry["id"] for entry in entries if await store.replay(entry["id"])]
    return Replayed(replayed=len(ids), ids=ids)
