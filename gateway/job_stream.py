"""Following one job as it changes: its view now, then again at every change, until it is final.

The API's ``GET /v1/jobs/{id}/stream`` and the console's job page both read ``follow()``. Behind it
is the contract of tasks/changes.py: every write that changes a job's status or progress also
publishes on the job's channel, in the same script or transaction. A message only says *that* the
job changed, so ``follow()`` subscribes first, waits for Redis to confirm, and only then reads the
record: a change made between the two is either in that read or announced after it, never lost.
Each message then means one re-read, and a view is yielded only if it differs from the last.

Streams live long and hold a connection each (a subscribed connection can do nothing else), so
they get a Redis pool of their own, bounded by STREAM_MAX_CLIENTS per process (``JobStreams``):
however many clients wait on jobs, the ingest path's pool and its pipelined connection are never
touched, and POST /v1/jobs pays nothing for streams existing (the publish is already in its
script). The pool does not retry a dropped connection: a silent reconnect of a subscription could
miss a message, so a lost Redis ends the stream instead and the client reconnects (EventSource
does it by itself), starting again from the record.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import Settings
from core.statuses import JOB_FINAL
from gateway.errors import ApiError
from gateway.routes.jobs import JobView
from tasks.keys import Keys
from tasks.store import decode

# how long Redis may take to confirm a SUBSCRIBE (it answers in microseconds when it is up)
CONFIRM_SECONDS = 1.0
CLIENT_NAME = "gateway-job-stream"


class JobNotFound(Exception):
    """No such job, or one the caller may not see (told apart from neither, like GET /v1/jobs)."""


@dataclass
class JobStreams:
    """One API process's job streams: their own Redis pool and how many are open."""

    redis: Redis
    limit: int
    heartbeat_seconds: float
    open: int = 0

    @classmethod
    def of(cls, app: FastAPI) -> JobStreams:
        """The app's streams, made on first use: a process that never streams opens no pool."""
        streams: JobStreams | None = getattr(app.state, "job_streams", None)
        if streams is None:
            settings: Settings = app.state.settings
            limit = settings.stream_max_clients
            pool = ConnectionPool.from_url(
                settings.redis_address,
                # one subscribed connection per stream, and one for its re-reads at most
                max_connections=2 * limit,
                socket_timeout=settings.redis_timeout_seconds,
                socket_connect_timeout=settings.redis_timeout_seconds,
                retry=Retry(NoBackoff(), 0),
                # CLIENT LIST names them: an operator (and a test) can count open streams
                client_name=CLIENT_NAME,
            )
            streams = cls(Redis(connection_pool=pool), limit, settings.stream_heartbeat_seconds)
            app.state.job_streams = streams
        return streams

    def take(self) -> None:
        """Count one more open stream; 503 with Retry-After when STREAM_MAX_CLIENTS are open."""
        if self.open >= self.limit:
            raise ApiError(
                "unavailable",
                f"{self.limit} job streams are open on this process; try again shortly",
                headers={"Retry-After": "5"},
            )
        self.open += 1

    def give_back(self) -> None:
        """One stream fewer."""
        self.open -= 1


def view(record: dict[str, Any]) -> dict[str, Any]:
    """What GET /v1/jobs/{id} answers for ``record``, as JSON-ready values."""
    return JobView.model_validate(record).model_dump(mode="json")


async def follow(
    redis: Redis, keys: Keys, job_id: str, *, owner: str | None, idle_seconds: float
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """The job's view, then each changed view, ending after a final one.

    ``owner``: only that owner's job is shown (None: any job, for admins). The first step raises
    JobNotFound (or a Redis error); later steps raise JobNotFound if the record expires. None is
    yielded after ``idle_seconds`` without a change: the caller's turn to send a keep-alive. The
    record is read again then too, which also notices a Redis that went silent.
    """
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(keys.job_changes(job_id))
        await _confirmed(pubsub)
        last = await _read(redis, keys, job_id, owner)
        yield last
        while last["status"] not in JOB_FINAL:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=idle_seconds)
            current = await _read(redis, keys, job_id, owner)
            if current != last:
                last = current
                yield current
            elif message is None:
                yield None
    finally:
        # runs when the client went away too (its task cancelled): shielded, or the cancellation
        # would interrupt the unsubscribe and leave the connection subscribed
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _confirmed(pubsub: PubSub) -> None:
    """Wait for Redis's reply to SUBSCRIBE: from then on every publish reaches us."""
    deadline = time.monotonic() + CONFIRM_SECONDS
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=deadline - time.monotonic())
        if message is not None and message["type"] in ("subscribe", b"subscribe"):
            return
    raise RedisTimeoutError("Redis did not confirm the subscription")


async def _read(redis: Redis, keys: Keys, job_id: str, owner: str | None) -> dict[str, Any]:
    raw = await redis.hgetall(keys.job(job_id))
    record = decode(raw) if raw else None
    # another caller's job is as absent as a job that never existed
    if record is None or (owner is not None and record.get("owner") != owner):
        raise JobNotFound(job_id)
    return view(record)
