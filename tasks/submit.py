"""Submitting a job: the one place a job's record, queue message and idempotency claim are built.

The API (gateway/routes/jobs.py) awaits the async store with what ``plan_job`` builds; webhook
routes and beat's periodic jobs call ``submit_job``, which writes the same record and message
through the same atomic script; dead-letter replay enqueues with ``dispatch``. This module imports
nothing of the worker's (no Celery), so the API can use it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from core.kinds import KINDS, Kind
from core.retry import policy_for
from core.settings import Settings, get_settings
from core.tracing import TraceContext, current_trace, new_trace, record_fields
from tasks.protocol import job_message, new_id
from tasks.queues import queue_for
from tasks.store import Idempotency, NewJob, create_sync

# Fields of a request body that are about the job, not the kind's input.
ENVELOPE = ("callback_url", "run_at", "delay_seconds")


class InvalidSchedule(ValueError):
    """A run_at or delay_seconds that cannot be honoured; the message names the field."""


class Dispatch(NamedTuple):
    """Where a job of a kind goes and how many attempts it gets: what a new job and a replay
    enqueue alike."""

    queue: str
    message: str
    max_attempts: int


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """A validated job, ready for the store's create script."""

    job: NewJob
    message: str
    queue: str
    idempotency: Idempotency | None


def dispatch(kind: Kind, job_id: str) -> Dispatch:
    """The queue, the Celery message and the attempts budget of job ``job_id`` of ``kind``."""
    queue = queue_for(kind.task)
    budget = policy_for(kind.name, kind.retry).max_attempts
    return Dispatch(queue, job_message(kind.task, job_id, queue), budget)


def plan_job(
    kind: Kind,
    payload: dict[str, Any],
    *,
    owner: str,
    settings: Settings,
    callback_url: str | None = None,
    schedule: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    body_sha256: str = "",
    trace: TraceContext | None = None,
) -> PlannedJob:
    """Validate ``payload`` for ``kind`` and build the job's record, message and claim.

    ``schedule`` may hold run_at or delay_seconds (as a request body gives them). ``trace`` is
    the submitting span (the API's ingest span); without one, the current span (an event being
    routed), else a new trace (a periodic job). Raises pydantic.ValidationError for an invalid
    payload, then InvalidSchedule for a bad due time.
    """
    kind.input.model_validate(payload)
    due = due_at(schedule, settings.max_delay_seconds) if schedule else 0.0
    job_id = new_id()
    queue, message, budget = dispatch(kind, job_id)
    job = NewJob(
        id=job_id,
        kind=kind.name,
        owner=owner,
        payload=payload,
        max_attempts=budget,
        callback_url=callback_url,
        due=due,
        **record_fields(trace or current_trace() or new_trace()),
    )
    idem = None
    if idempotency_key:
        idem = Idempotency(idempotency_key, body_sha256, settings.idempotency_ttl_seconds)
    return PlannedJob(job, message, queue, idem)


def submit_job(
    kind: str,
    payload: dict[str, Any],
    *,
    owner: str,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Validate ``payload`` for ``kind``, record and enqueue it from a worker; returns the job id.

    With ``idempotency_key``, a second submission with the same key returns the first job's id.
    The job joins the current trace (core/tracing.py), if any.
    Raises KeyError for an unknown kind and pydantic.ValidationError for an invalid payload.
    """
    # Imported here: the worker's Redis client lives with the worker's runtime (Celery), which
    # the API, importing this module for plan_job, must not load.
    from tasks.runtime import keys, worker_redis

    settings = get_settings()
    plan = plan_job(
        KINDS[kind],
        payload,
        owner=owner,
        settings=settings,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
    )
    existing = create_sync(
        worker_redis(),
        keys(),
        settings.job_ttl_seconds,
        plan.job,
        plan.message,
        plan.queue,
        plan.idempotency,
    )
    return existing[0] if existing else plan.job.id


def due_at(schedule: Mapping[str, Any], max_delay: int) -> float:
    """Epoch seconds the job is due at (0 = now), from run_at or delay_seconds, at most
    ``max_delay`` ahead (beyond, a schedule entry would wait for a record long gone)."""
    if "run_at" in schedule and "delay_seconds" in schedule:
        raise InvalidSchedule("give run_at or delay_seconds, not both")
    if "delay_seconds" in schedule:
        delay = schedule["delay_seconds"]
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not delay >= 0:
            raise InvalidSchedule("delay_seconds: must be a number >= 0")
        if delay > max_delay:  # inf included; NaN never gets here (not >= 0)
            raise InvalidSchedule(f"delay_seconds: must be at most {max_delay}")
        return time.time() + float(delay) if delay else 0.0
    if "run_at" in schedule:
        try:
            moment = datetime.fromisoformat(str(schedule["run_at"]).replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidSchedule("run_at: must be an ISO 8601 timestamp") from exc
        if moment.tzinfo is None:
            raise InvalidSchedule("run_at: must carry a time zone (e.g. Z)")
        due = moment.timestamp()
        now = time.time()
        if due - now > max_delay:
            raise InvalidSchedule(f"run_at: must be at most {max_delay} s from now")
        return due if due > now else 0.0
    return 0.0
