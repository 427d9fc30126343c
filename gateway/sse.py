"""A followed job as server-sent events: the wire format, keep-alives, the end, and clean-up.

Events (each ``data`` one line of JSON):

- ``job`` (with ``id:`` 1, 2, ...): the job's view, as GET /v1/jobs/{id} answers it; first at once,
  then at every change of status or progress;
- ``end``: after the view with a final status; the server then closes the stream;
- ``unavailable`` (Redis lost) or ``gone`` (the record expired): the stream ends; a client
  reconnects and starts again from the record (EventSource does so after ``retry:``);
- ``signed-out`` (console only): the session ended;
- ``: keep-alive`` comments every STREAM_HEARTBEAT_SECONDS of quiet, so proxies keep it open.

A reconnecting client needs no Last-Event-ID: every stream starts with the current view.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import redis
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.job_stream import JobNotFound, JobStreams, follow

# how long a client waits before reconnecting after a stream broke (the SSE `retry:` field)
RECONNECT_MS = 2000
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"

Views = AsyncGenerator[dict[str, Any] | None, None]
StillAllowed = Callable[[], Awaitable[bool]]


def frame(event: str, data: Any, event_id: int | None = None) -> str:
    """One event on the wire."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that always ends its follow(), however it ends.

    Starlette cancels the body when the client disconnects, and never starts it if the client is
    gone before the first byte; either way ``__call__`` returns or raises, and then the
    subscription is closed and the slot given back.
    """

    def __init__(self, body: AsyncIterator[str], views: Views, streams: JobStreams) -> None:
        super().__init__(body, media_type=MEDIA_TYPE, headers=HEADERS)
        self.views, self.streams = views, streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, then free what the stream held."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await _close(self.views, self.streams)


async def _close(views: Views, streams: JobStreams) -> None:
    try:
        with anyio.CancelScope(shield=True):
            await views.aclose()
    finally:
        streams.give_back()


async def open_job_stream(
    request: Request, job_id: str, owner: str | None, still_allowed: StillAllowed | None = None
) -> EventStream:
    """The stream of job ``job_id`` (of ``owner``; None: any job).

    Raises before any byte is sent, so the caller answers in its own error shape: 503 when
    STREAM_MAX_CLIENTS are open (ApiError) or Redis is down (a Redis error), JobNotFound.
    """
    streams = JobStreams.of(request.app)
    streams.take()
    views = follow(
        streams.redis,
        request.app.state.keys,
        job_id,
        owner=owner,
        idle_seconds=streams.heartbeat_seconds,
    )
    try:
        first = await anext(views)
    except BaseException:
        await _close(views, streams)
        raise
    assert first is not None  # follow's first step is always a view
    return EventStream(_events(first, views, still_allowed), views, streams)


async def _events(
    first: dict[str, Any], rest: Views, still_allowed: StillAllowed | None
) -> AsyncIterator[str]:
    yield f"retry: {RECONNECT_MS}\n" + frame("job", first, 1)
    sent, last = 1, first
    try:
        async for current in rest:
            if current is None:
                if still_allowed is not None and not await still_allowed():
                    yield frame("signed-out", "")
                    return
                yield ": keep-alive\n\n"
                continue
            sent, last = sent + 1, current
            yield frame("job", current, sent)
    except JobNotFound:
        yield frame("gone", {"code": "job_not_found", "detail": "the job's record expired"})
        return
    except redis.RedisError:
        detail = "the job store is unreachable; reconnect shortly"
        yield frame("unavailable", {"code": "redis_unavailable", "detail": detail})
        return
    yield frame("end", {"status": last["status"]})
