"""GET /v1/jobs/{id}/stream: wait for a job without polling (server-sent events, gateway/sse.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.deps import CallerDep
from gateway.errors import ApiError, responses
from gateway.job_stream import JobNotFound
from gateway.sse import MEDIA_TYPE, open_job_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_EXAMPLE = (
    "retry: 2000\nevent: job\nid: 1\n"
    'data: {"id":"j_…","kind":"echo","status":"queued","attempts":0,"progress":0,…}\n\n'
    'event: job\nid: 2\ndata: {…,"status":"running",…}\n\n'
    'event: job\nid: 3\ndata: {…,"status":"succeeded","result":{…},"progress":100}\n\n'
    'event: end\ndata: {"status":"succeeded"}\n\n'
)

_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["job", "end", "unavailable", "gone"]},
        "id": {"type": "string", "description": "on `job` events: 1, 2, ... within this stream"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": (
                "job: the job's view (as GET /v1/jobs/{job_id}); end: {status}; "
                "unavailable, gone: {code, detail}"
            ),
        },
        "retry": {"description": "milliseconds to wait before reconnecting (first event)"},
    },
}


@router.get(
    "/{job_id}/stream",
    response_class=Response,
    responses={
        200: {
            "description": (
                "text/event-stream: `job` events (the GET /v1/jobs/{job_id} view) now and at "
                "every status or progress change; `end` after a final status, then the stream "
                "closes. `unavailable` (Redis lost) or `gone` (record expired) end it early: "
                "reconnect. `: keep-alive` comments every STREAM_HEARTBEAT_SECONDS."
            ),
            # OpenAPI 3.1 has no itemSchema: an event stream's `schema` describes one event
            "content": {MEDIA_TYPE: {"schema": _EVENT, "example": _EXAMPLE}},
        },
        **responses(401, 404, 503),
    },
)
async def stream_job(job_id: str, request: Request, caller: CallerDep) -> Response:
    """Follow a job until it is final: its owner's key or an admin key.

    503 with Retry-After when Redis is down or STREAM_MAX_CLIENTS streams are open here.
    """
    owner, admin = caller
    try:
        return await open_job_stream(request, job_id, None if admin else owner)
    except JobNotFound:
        raise ApiError("job_not_found", f"no job {job_id}") from None
