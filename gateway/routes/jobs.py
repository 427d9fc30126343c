"""The job API: submit a job of a kind, read its status."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from core.kinds import KINDS
from core.retry import policy_for
from core.settings import Settings
from gateway.auth import authenticate
from gateway.body import parse_object, read_limited, require_json
from gateway.deps import JobsDep, KeysDep, OwnerDep
from gateway.errors import ApiError, invalid_input, responses
from handlers.outbound import UrlRejected, check_url
from tasks.deliveries import list_for
from tasks.protocol import job_message, new_id
from tasks.queues import queue_for
from tasks.store import Idempotency, JobStore, NewJob

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Fields of the request body that are about the job, not the kind's input.
ENVELOPE = ("callback_url", "run_at", "delay_seconds")


class JobAccepted(BaseModel):
    """The 202 answer: where to look for the job."""

    id: str
    status: str
    status_url: str


class DeliveryView(BaseModel):
    """One outbound delivery (a callback) and its attempts."""

    id: str
    url: str
    event_type: str | None = None
    status: str
    attempts: list[dict[str, Any]]
    created_at: str | None = None
    finished_at: str | None = None
    next_attempt_at: str | None = None


class JobView(BaseModel):
    """A job as a caller sees it."""

    id: str
    kind: str
    status: str
    attempts: int
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    progress: int = 0


# The hot path: no dependencies to solve and no response model to re-validate (each costs more
# per request than the Redis write; bench/README.md). The OpenAPI schema is declared by hand.
_SUBMIT_DOC: dict[str, Any] = {
    "parameters": [
        {"name": "Authorization", "in": "header", "required": True, "schema": {"type": "string"}},
        {
            "name": "Idempotency-Key",
            "in": "header",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "the kind's input, plus optional callback_url, run_at or delay_seconds",
    },
}


@router.post(
    "/{kind}",
    status_code=202,
    response_model=JobAccepted,
    responses=responses(400, 401, 404, 409, 413, 415, 422, 503),
    openapi_extra=_SUBMIT_DOC,
)
async def submit_job(kind: str, request: Request) -> Response:
    """Validate, record and enqueue a job; 202 once it is in Redis."""
    state = request.app.state
    owner = authenticate(request.headers.get("authorization"), state.api_key_hashes)
    settings: Settings = state.settings
    jobs: JobStore = state.jobs
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
        raise ApiError("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
    spec = KINDS.get(kind)
    if spec is None:
        raise ApiError("unknown_kind", f"no job kind {kind!r}; known: {', '.join(KINDS)}")
    require_json(request)
    raw = await read_limited(request, settings.max_job_body_bytes)
    body = parse_object(raw)
    envelope = {name: body.pop(name) for name in ENVELOPE if name in body}
    try:
        spec.input.model_validate(body)
    except ValidationError as exc:
        raise invalid_input(exc) from exc
    due = _due(envelope, settings.max_delay_seconds)
    callback_url = envelope.get("callback_url")
    if callback_url is not None:
        await _check_callback(callback_url, request)
    job_id = new_id()
    queue = queue_for(spec.task)
    policy = policy_for(kind, spec.retry)
    job = NewJob(
        id=job_id,
        kind=kind,
        owner=owner,
        payload=body,
        max_attempts=policy.max_attempts,
        callback_url=callback_url,
        due=due,
    )
    idem = None
    if idempotency_key:
        idem = Idempotency(
            idempotency_key, hashlib.sha256(raw).hexdigest(), settings.idempotency_ttl_seconds
        )
    existing = await jobs.create(job, job_message(spec.task, job_id, queue), queue, idem)
    if existing is not None:
        job_id, body_hash = existing
        if idem is not None and body_hash != idem.body_sha256:
            raise ApiError(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different body",
            )
        current = await jobs.get(job_id)
        status = current["status"] if current else "queued"
        return _accepted(job_id, status, {"Idempotent-Replayed": "true"})
    return _accepted(job_id, "scheduled" if due else "queued")


def _accepted(job_id: str, status: str, headers: dict[str, str] | None = None) -> Response:
    body = f'{{"id":"{job_id}","status":"{status}","status_url":"/v1/jobs/{job_id}"}}'
    return Response(body, 202, headers, media_type="application/json")


@router.get("/{job_id}", response_model=JobView, responses=responses(401, 404, 503))
async def get_job(job_id: str, owner: OwnerDep, jobs: JobsDep) -> JobView:
    """A job's status, attempts, timestamps, progress, and result or error."""
    record = await jobs.get(job_id)
    # another caller's job is as absent as a job that never existed
    if record is None or record.get("owner") != owner:
        raise ApiError("job_not_found", f"no job {job_id}")
    return JobView.model_validate(record)


@router.get(
    "/{job_id}/deliveries",
    response_model=list[DeliveryView],
    responses=responses(401, 404, 503),
)
async def job_deliveries(
    job_id: str, owner: OwnerDep, jobs: JobsDep, keys: KeysDep
) -> list[dict[str, Any]]:
    """The job's callback deliveries, each with every attempt (time, status, latency, error)."""
    record = await jobs.get(job_id)
    if record is None or record.get("owner") != owner:
        raise ApiError("job_not_found", f"no job {job_id}")
    return await list_for(jobs.redis, keys, f"job:{job_id}")


async def _check_callback(url: Any, request: Request) -> None:
    """400 unless ``url`` is one the outbound guard would dial (checked again at connect time)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ApiError("url_invalid", "callback_url must be a URL string")
    try:
        await check_url(url, request.app.state.outbound_policy)
    except UrlRejected as exc:
        raise ApiError(exc.code, f"callback_url refused: {exc.detail}") from exc


def _due(envelope: dict[str, Any], max_delay: int) -> float:
    """Epoch seconds the job is due at (0 = now), from run_at or delay_seconds, at most
    ``max_delay`` ahead (beyond, a schedule entry would wait for a record long gone)."""
    if "run_at" in envelope and "delay_seconds" in envelope:
        raise _unprocessable("give run_at or delay_seconds, not both", None)
    if "delay_seconds" in envelope:
        delay = envelope["delay_seconds"]
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not delay >= 0:
            raise _unprocessable("delay_seconds: must be a number >= 0", None)
        if delay > max_delay:  # inf included; NaN never gets here (not >= 0)
            raise _unprocessable(f"delay_seconds: must be at most {max_delay}", None)
        return time.time() + float(delay) if delay else 0.0
    if "run_at" in envelope:
        try:
            moment = datetime.fromisoformat(str(envelope["run_at"]).replace("Z", "+00:00"))
        except ValueError as exc:
            raise _unprocessable("run_at: must be an ISO 8601 timestamp", None) from exc
        if moment.tzinfo is None:
            raise _unprocessable("run_at: must carry a time zone (e.g. Z)", None)
        due = moment.timestamp()
        now = time.time()
        if due - now > max_delay:
            raise _unprocessable(f"run_at: must be at most {max_delay} s from now", None)
        return due if due > now else 0.0
    return 0.0


def _unprocessable(detail: str, errors: list[dict[str, Any]] | None) -> ApiError:
    return ApiError("validation_error", detail, errors=errors)
