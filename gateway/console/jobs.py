"""Console jobs: newest first, filtered by kind, status and creation time, kept live by a stream.

The page reads the job indexes (tasks/job_index.py), never the whole keyspace, so it answers in
milliseconds at a million records; the time it took is shown on the page. The stream
(``/console/jobs/stream``) listens to every job's change channel (tasks/changes.py) and sends the
summary of each changed job that the page's filters could show; static/jobs.js updates its row
in place or puts a new one on top. Its work is bounded per connection: changes are gathered for
``FLUSH_SECONDS`` and each changed job is read once per gathering (one pipelined HMGET for all of
them), at most ``MAX_PENDING`` of them; beyond that the page is told it missed some.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import anyio
import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from core.kinds import KINDS
from core.statuses import JobStatus
from gateway.console import session as sessions
from gateway.console.session import SessionDep
from gateway.console.web import PREFIX, ConsoleError, ConsoleRoute, form_time, render
from tasks.job_index import SUMMARY_FIELDS, Filters, list_jobs, summary_of
from tasks.keys import Keys
from tasks.paging import InvalidCursor

router = APIRouter(prefix=f"{PREFIX}/jobs", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50
FLUSH_SECONDS = 0.2  # a job changing in a burst is read at most once per this
MAX_PENDING = 200  # changed jobs read per flush; more in one flush: the page hears "overflow"
SESSION_CHECK_SECONDS = 5.0
KEEPALIVE_SECONDS = 15.0


def _time_ms(text: str, name: str) -> int | None:
    """A form's time (web.form_time) as epoch ms, the index's score."""
    moment = form_time(text, name)
    return None if moment is None else round(moment * 1000)


def _filters(kind: str, status: str, since: str, until: str) -> Filters:
    if kind and kind not in KINDS:
        raise ConsoleError(400, f"No kind {kind}.")
    if status and status not in JobStatus.__members__.values():
        raise ConsoleError(400, f"No status {status}.")
    return Filters(
        kind=kind or None,
        status=status or None,
        since_ms=_time_ms(since, "since"),
        until_ms=_time_ms(until, "until"),
    )


def _redis(request: Request) -> Redis:
    client: Redis = request.app.state.redis
    return client


@router.get("")
async def jobs_page(
    request: Request,
    _: SessionDep,
    id: str = "",
    kind: str = "",
    status: str = "",
    since: str = "",
    until: str = "",
    cursor: str = "",
) -> Response:
    """Jobs newest first (or, from the navigation's job-id box, one job's page)."""
    if id.strip():
        return RedirectResponse(f"{PREFIX}/jobs/{id.strip()}", 303)
    filters = _filters(kind, status, since, until)
    started = time.perf_counter()
    try:
        page = await list_jobs(
            _redis(request),
            request.app.state.keys,
            filters,
            kinds=KINDS,
            limit=PAGE_SIZE,
            cursor=cursor or None,
        )
    except InvalidCursor:
        raise ConsoleError(400, "That page link is not one of ours.") from None
    took_ms = (time.perf_counter() - started) * 1000
    form = {"kind": kind, "status": status, "since": since, "until": until}
    query = {name: value for name, value in form.items() if value}
    context = {
        "jobs": page.jobs,
        "next_query": {**query, "cursor": page.next_cursor} if page.next_cursor else None,
        "stream_query": query,
        "first_page": not cursor,
        "newest_ms": max((job["created_ms"] or 0 for job in page.jobs), default=0),
        "form": form,
        "kinds": list(KINDS),
        "statuses": [str(s) for s in JobStatus],
        "took_ms": took_ms,
    }
    return render(request, "jobs.html", context)


@router.get("/stream")
async def jobs_stream(
    request: Request,
    _: SessionDep,
    kind: str = "",
    status: str = "",
    since: str = "",
    until: str = "",
) -> Response:
    """text/event-stream: the summary of each job that changes and the page's filters allow."""
    filters = _filters(kind, status, since, until)
    # a row already on the page follows its job to any status; a new row needs the status too
    shown = Filters(kind=filters.kind, since_ms=filters.since_ms, until_ms=filters.until_ms)
    return ClosingStream(
        _changes(request, filters, shown),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class ClosingStream(StreamingResponse):
    """A stream whose generator is closed when the response ends, however it ends.

    Starlette cancels a response whose client went away; if the generator was paused at a
    ``yield`` just then, nothing closes it but the garbage collector, and its subscription
    would hold a Redis connection meanwhile.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream, then close its generator (shielded: the request may be cancelled)."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await cast(AsyncGenerator[str, None], self.body_iterator).aclose()


async def _changes(request: Request, filters: Filters, shown: Filters) -> AsyncIterator[str]:
    """The stream's events until the client goes, the session ends or Redis drops us."""
    client, keys = _redis(request), request.app.state.keys
    channel_prefix = keys.job_changes("")
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(keys.job_changes_pattern)
        yield 'event: ready\ndata: ""\n\n'
        pending: dict[str, None] = {}  # changed job ids, in order, once each
        overflow = False
        now = time.monotonic()
        flush_at, check_at, keepalive_at = now + FLUSH_SECONDS, now + SESSION_CHECK_SECONDS, now
        while True:
            wait = max(0.0, flush_at - time.monotonic())
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is not None and message.get("type") == "pmessage":
                job_id = message["channel"].decode().removeprefix(channel_prefix)
                if job_id in pending or len(pending) < MAX_PENDING:
                    pending[job_id] = None
                else:
                    overflow = True
            now = time.monotonic()
            if now < flush_at:
                continue
            if pending:
                for event in await _summaries(client, keys, list(pending), filters, shown):
                    yield event
                    keepalive_at = now
                pending.clear()
            if overflow:
                yield 'event: overflow\ndata: ""\n\n'
                overflow = False
            if now - keepalive_at >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                keepalive_at = now
            flush_at = now + FLUSH_SECONDS
            if await request.is_disconnected():
                return
            if now >= check_at:
                check_at = now + SESSION_CHECK_SECONDS
                if await sessions.current_session(request) is None:
                    yield 'event: signed-out\ndata: ""\n\n'
                    return
    except redis.RedisError:
        # the browser's EventSource reconnects; the page says so meanwhile
        yield 'event: unavailable\ndata: "redis"\n\n'
    finally:
        await _close(pubsub)


async def _summaries(
    client: Redis, keys: Keys, job_ids: list[str], filters: Filters, shown: Filters
) -> list[str]:
    """The ``job`` events of changed jobs the page may show (one pipelined read for all)."""
    async with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), SUMMARY_FIELDS)
        rows = await pipe.execute()
    events = []
    for values in rows:
        row = summary_of(values)
        if row is None or not shown.matches(row):
            continue
        row["match"] = filters.matches(row)
        events.append(f"event: job\ndata: {json.dumps(row)}\n\n")
    return events


async def _close(pubsub: Any) -> None:
    """Give the subscription's connection back, even while the response is being cancelled (a
    client that went away): shielded, and bounded in case Redis went too."""
    with anyio.move_on_after(2, shield=True):
        try:
            await pubsub.aclose()
        except (redis.RedisError, OSError):
            pass
