"""The job page, live: /console/jobs/{id}/stream, the API's job stream under the console's session.

The same follow() as GET /v1/jobs/{id}/stream (gateway/job_stream.py), so the page and a service
waiting on the job see the same views; static/job.js puts them into the page with textContent.
An admin session sees any job; the stream says ``signed-out`` once the session has ended.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.console import session as sessions
from gateway.console.session import SessionDep
from gateway.console.web import PREFIX, ConsoleError, ConsoleRoute
from gateway.job_stream import JobNotFound
from gateway.sse import open_job_stream

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


@router.get("/jobs/{job_id}/stream")
async def job_stream(job_id: str, request: Request, _: SessionDep) -> Response:
    """text/event-stream of the job's views until it is final (gateway/sse.py has the events)."""

    async def still_signed_in() -> bool:
        return await sessions.current_session(request) is not None

    try:
        return await open_job_stream(request, job_id, None, still_signed_in)
    except JobNotFound:
        raise ConsoleError(404, f"No job {job_id} (it may have expired).") from None
