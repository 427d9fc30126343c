"""Submitting a job from inside the system (beat's periodic jobs, webhook routes): the same record
and message the API writes, through the same atomic script."""

from __future__ import annotations

import uuid
from typing import Any

from core.kinds import KINDS
from core.retry import policy_for
from core.settings import get_settings
from tasks.protocol import job_message
from tasks.queues import queue_for
from tasks.runtime import keys, worker_redis
from tasks.store import Idempotency, NewJob, create_sync


def submit_job(
    kind: str,
    payload: dict[str, Any],
    *,
    owner: str,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Validate ``payload`` for ``kind``, record and enqueue it; returns the job id.

    With ``idempotency_key``, a second submission with the same key returns the first job's id.
    Raises KeyError for an unknown kind and pydantic.ValidationError for an invalid payload.
    """
    spec = KINDS[kind]
    spec.input.model_validate(payload)
    job_id = str(uuid.uuid4())
    queue = queue_for(spec.task)
    settings = get_settings()
    job = NewJob(
        id=job_id,
        kind=kind,
        owner=owner,
        payload=payload,
        max_attempts=policy_for(kind, spec.retry).max_attempts,
        callback_url=callback_url,
    )
    idem = (
        Idempotency(idempotency_key, "", settings.idempotency_ttl_seconds)
        if idempotency_key
        else None
    )
    message = job_message(spec.task, job_id, queue)
    existing = create_sync(
        worker_redis(), keys(), settings.job_ttl_seconds, job, message, queue, idem
    )
    return existing[0] if existing else job_id
