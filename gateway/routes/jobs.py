"""The job API: submit a job of a kind, read its status."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from core.kinds import KINDS
from core.settings import Settings
from core.tracing import enter, export, exporting, ingest
from gateway.auth import authenticate
from gateway.body import parse_object, read_limited, require_json, trace_headers
from gateway.deps import CallerDep, JobsDep, KeysDep, OwnerDep
from gateway.errors import ApiError, invalid_input, responses
from gateway.openapi import article, request_body
from handlers.outbound import UrlRejected, check_url
from tasks.deliveries import list_for
from tasks.store import JobStore
from tasks.submit import ENVELOPE, InvalidSchedule, plan_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobAccepted(BaseModel):
    """The 202 answer: where to look for the job."""

    id: str
    status: str
    status_url: str


class DeliveryView(BaseModel):
    """One outbound delivery (a callback, a forward, or to an endpoint) and its attempts."""

    id: str
    url: str
    endpoint_id: str | None = None
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
_HEADERS_DOC: list[dict[str, Any]] = [
    {"name": "Authorization", "in": "header", "required": True, "schema": {"type": "string"}},
    {
        "name": "Idempotency-Key",
        "in": "header",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    # W3C trace context: continued when valid, else ignored and a new trace started (never a 4xx)
    {"name": "traceparent", "in": "header", "schema": {"type": "string"}},
    {"name": "tracestate", "in": "header", "schema": {"type": "string"}},
]


def _submit_endpoint(known: str | None) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """The submit route of kind ``known``, or (None) of the kind named by the path."""

    async def submit_job(request: Request) -> Response:
        """Validate, record and enqueue a job; 202 once it is in Redis."""
        state = request.app.state
        owner = authenticate(request.headers.get("authorization"), state.api_key_hashes)
        settings: Settings = state.settings
        jobs: JobStore = state.jobs
        idempotency_key = request.headers.get("idempotency-key")
        started = time.time_ns()
        traceparent, tracestate = trace_headers(request)
        trace = ingest(traceparent, tracestate if traceparent else None)
        enter(trace)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
            raise ApiError("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
        kind = known or request.path_params["kind"]
        spec = KINDS.get(kind)
        if spec is None:
            known_kinds = ", ".join(KINDS)
            raise ApiError("unknown_kind", f"no job kind {kind!r}; known: {known_kinds}")
        require_json(request)
        raw = await read_limited(request, settings.max_job_body_bytes)
        body = parse_object(raw)
        envelope = {name: body.pop(name) for name in ENVELOPE if name in body}
        try:
            plan = plan_job(
                spec,
                body,
                owner=owner,
                settings=settings,
                callback_url=envelope.get("callback_url"),
                schedule=envelope,
                idempotency_key=idempotency_key,
                body_sha256=hashlib.sha256(raw).hexdigest() if idempotency_key else "",
                trace=trace,
            )
        except ValidationError as exc:
            raise invalid_input(exc) from exc
        except InvalidSchedule as exc:
            raise _unprocessable(str(exc), None) from exc
        if plan.job.callback_url is not None:
            await _check_callback(plan.job.callback_url, request)
        existing = await jobs.create(plan.job, plan.message, plan.queue, plan.idempotency)
        if existing is not None:
            job_id, body_hash = existing
            if plan.idempotency is not None and body_hash != plan.idempotency.body_sha256:
                raise ApiError(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different body",
                )
            current = await jobs.get(job_id)
            status = current["status"] if current else "queued"
            return _accepted(job_id, status, {"Idempotent-Replayed": "true"})
        status = "scheduled" if plan.job.due else "queued"
        if exporting():
            attributes = {"gateway.job_id": plan.job.id, "gateway.kind": kind}
            export("POST /v1/jobs", trace, started, kind="server", attributes=attributes)
        return _accepted(plan.job.id, status, {"traceresponse": trace.traceparent})

    return submit_job


# One documented route per kind, before GET /{job_id}: a concrete path wins over a template.
for _kind in KINDS.values():
    router.add_api_route(
        f"/{_kind.name}",
        _submit_endpoint(_kind.name),
        methods=["POST"],
        status_code=202,
        response_model=JobAccepted,
        responses=responses(400, 401, 409, 413, 415, 422, 503),
        openapi_extra={"parameters": _HEADERS_DOC, "requestBody": request_body(_kind)},
        name=f"submit_{_kind.name}_job",
        summary=f"Submit {_kind.name} job",
        description=f"Validate, record and enqueue {article(_kind.name)} job; 202 once in Redis.",
    )


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
    job_id: str, caller: CallerDep, jobs: JobsDep, keys: KeysDep
) -> list[dict[str, Any]]:
    """The job's deliveries, each with every attempt (time, status, latency, error).

    Its owner sees its callback; the deliveries of its outcome to the operator's endpoints (their
    URLs may carry tokens) are listed to admin keys only.
    """
    owner, admin = caller
    record = await jobs.get(job_id)
    if record is None or record.get("owner") != owner:
        raise ApiError("job_not_found", f"no job {job_id}")
    listed = await list_for(jobs.redis, keys, f"job:{job_id}")
    return listed if admin else [d for d in listed if not d.get("endpoint_id")]


async def _check_callback(url: Any, request: Request) -> None:
    """400 unless ``url`` is one the outbound guard would dial (checked again at connect time)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ApiError("url_invalid", "callback_url must be a URL string")
    try:
        await check_url(url, request.app.state.outbound_policy)
    except UrlRejected as exc:
        raise ApiError(exc.code, f"callback_url refused: {exc.detail}") from exc


def _unprocessable(detail: str, errors: list[dict[str, Any]] | None) -> ApiError:
    return ApiError("validation_error", detail, errors=errors)


# Any other kind: 404 unknown_kind (after the API key check, as for a known kind). Last, and out of
# the schema, so the URL shape /v1/jobs/{x} is documented (and its 405 Allow named) as GET only.
router.add_api_route(
    "/{kind}",
    _submit_endpoint(None),
    methods=["POST"],
    include_in_schema=False,
    name="submit_unknown_kind",
)
