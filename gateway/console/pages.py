"""Console pages: sign in and out, the live overview (and its event stream), a job, static files."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.settings import Settings
from gateway.console import session as sessions
from gateway.console.chart import COLOURS, chart
from gateway.console.session import SessionDep
from gateway.console.web import (
    PREFIX,
    SIGN_IN,
    STATIC,
    ConsoleError,
    ConsoleRoute,
    render,
    seconds,
)
from tasks.deliveries import list_for
from tasks.job_attempts import timeline
from tasks.keys import Keys
from tasks.monitor import Snapshot, last_hour, snapshot
from tasks.store import JobStore

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

STREAM_INTERVAL_SECONDS = 2.0
# in flight reads each live consumer's held messages (O(messages held), tasks/monitor.py): done
# at most this often for the whole API process, whatever the number of viewers and ticks
IN_FLIGHT_EVERY_SECONDS = 10.0
# what the job page shows; a record holds only the fields its history has set
JOB_FIELDS = (
    "id", "kind", "status", "max_attempts", "created_at", "started_at", "finished_at",
    "replayed_at", "callback_url", "payload", "error", "result",
)  # fmt: skip


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    """The sign-in form (or the overview, when already signed in)."""
    if await sessions.current_session(request) is not None:
        return RedirectResponse(PREFIX, 303)
    return _sign_in_form(request, None, 200)


def _sign_in_form(request: Request, message: str | None, status: int) -> Response:
    token = sessions.new_token()
    response = render(request, "sign_in.html", {"message": message, "signin_token": token}, status)
    sessions.set_signin_cookie(request, response, token)
    return response


@router.post("/sign-in")
async def sign_in(
    request: Request,
    key: Annotated[str, Form()] = "",
    signin_token: Annotated[str, Form()] = "",
) -> Response:
    """Check an admin key; on success a session cookie and the overview."""
    if not sessions.signin_token_valid(request, signin_token):
        return _sign_in_form(request, "The form expired; please sign in again.", 403)
    wait = await sessions.take_signin_attempt(request)
    if wait:
        raise ConsoleError(
            429,
            f"Too many wrong keys from this address; try again in {wait} s.",
            {"Retry-After": str(wait)},
        )
    owner = sessions.admin_key_valid(request, key)
    if owner is None:
        return _sign_in_form(request, "That is not an admin key (ADMIN_API_KEYS).", 401)
    await sessions.refund_signin_attempt(request)
    response = RedirectResponse(PREFIX, 303)
    await sessions.open_session(request, response, owner)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: sessions.CsrfDep) -> Response:
    """End the session: its record is deleted, so the cookie opens nothing any more."""
    response = RedirectResponse(SIGN_IN, 303)
    await sessions.close_session(request, response, session)
    return response


def _sync_redis(request: Request) -> redis.Redis:
    """A synchronous client for tasks/monitor.py's snapshot, made on first use (run in a thread)."""
    client: redis.Redis | None = getattr(request.app.state, "console_sync_redis", None)
    if client is None:
        settings: Settings = request.app.state.settings
        timeout = settings.redis_timeout_seconds
        client = redis.Redis.from_url(
            settings.redis_address, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        request.app.state.console_sync_redis = client
    return client


def _read(request: Request) -> tuple[Snapshot, dict[str, int], dict[str, list[int]]]:
    """The snapshot, in flight by queue (read again only every IN_FLIGHT_EVERY_SECONDS), the
    last hour's counts: run in a thread (synchronous client)."""
    keys: Keys = request.app.state.keys
    client = _sync_redis(request)
    taken, held = getattr(request.app.state, "console_in_flight", (-math.inf, {}))
    if time.monotonic() - taken >= IN_FLIGHT_EVERY_SECONDS:
        state = snapshot(client, keys, in_flight=True)
        held = {queue.name: queue.in_flight or 0 for queue in state.queues}
        request.app.state.console_in_flight = (time.monotonic(), held)
    else:
        state = snapshot(client, keys)
    return state, held, last_hour(client, keys)


async def _overview(request: Request) -> dict[str, Any]:
    """The snapshot as the page and the stream show it (display text made here, once)."""
    state, held, activity = await run_in_threadpool(_read, request)
    queues = [
        {
            **asdict(queue),
            "oldest_age": seconds(queue.oldest_age_seconds),
            "in_flight": held.get(queue.name, 0),
        }
        for queue in state.queues
    ]
    return {
        "queues": queues,
        "scheduled": state.scheduled,
        "schedule_lag": seconds(state.schedule_lag_seconds),
        "dead_letters_total": state.dead_letters_total,
        "dead_letters": dict(sorted((k, v) for k, v in state.dead_letters.items() if v)),
        "chart": chart(activity),
        "taken_at": state.taken_at,
    }


@router.get("")
async def overview(request: Request, _: SessionDep) -> Response:
    """Queues, schedule and dead letters, kept current by the stream below."""
    context = {"overview": await _overview(request), "colours": COLOURS}
    return render(request, "overview.html", context)


@router.get("/stream/overview")
async def overview_stream(request: Request, _: SessionDep) -> Response:
    """text/event-stream: a snapshot every 2 s while the page is open and the session lasts."""

    async def events() -> AsyncIterator[str]:
        while not await request.is_disconnected():
            try:
                body = json.dumps(await _overview(request))
                yield f"event: overview\ndata: {body}\n\n"
            except redis.RedisError:
                yield 'event: unavailable\ndata: "redis"\n\n'
            await asyncio.sleep(STREAM_INTERVAL_SECONDS)
            if await sessions.current_session(request) is None:
                yield 'event: signed-out\ndata: ""\n\n'
                return

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/jobs/{job_id}")
async def job_page(job_id: str, request: Request, _: SessionDep) -> Response:
    """One job: payload, status, attempts, error, result, progress, callback deliveries."""
    jobs: JobStore = request.app.state.jobs
    record = await jobs.get(job_id)
    if record is None:
        raise ConsoleError(404, f"No job {job_id} (it may have expired).")
    deliveries = await list_for(jobs.redis, request.app.state.keys, f"job:{job_id}")
    job = {name: record.get(name) for name in JOB_FIELDS} | {
        "attempts": record.get("attempts", 0),
        "progress": record.get("progress", 0),
    }
    attempts = await timeline(jobs.redis, request.app.state.keys, record)
    context = {"job": job, "deliveries": deliveries, "timeline": attempts}
    return render(request, "job.html", context)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The console's own script and stylesheet (no CDN)."""
    if name not in STATIC:
        raise ConsoleError(404, "No such file.")
    body, media_type = STATIC[name]
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=86400"})


@router.get("/{rest:path}")
async def not_found(request: Request, rest: str) -> Response:
    """Any other /console path: a page, with the console's headers, not the API's JSON 404."""
    if not rest:
        return RedirectResponse(PREFIX, 303)
    raise ConsoleError(404, "No such page.")
