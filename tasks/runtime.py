"""Running one job on a worker: claim it, call its handler, and move it along the status machine.

The machine is drawn in core/statuses.py: from running, a job ends succeeded, waits retrying
(TransientError with attempts left), or ends failed (PermanentError, an invalid payload, a bug in
the handler) or dead (TransientError, no attempts left).

One piece (~290 lines): the claim, the run and the three ways out (retry, finish, offer to
endpoints) share one record and one transaction each; apart, the invariant "a final job always has
its callback and its endpoint deliveries queued" would span modules.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import redis
from celery.exceptions import Reject, TimeLimitExceeded
from pydantic import BaseModel, ValidationError

from core import logs
from core.kinds import KINDS, Kind
from core.retry import policy_for
from core.settings import get_settings
from core.statuses import JOB_DEAD_LETTER, JobStatus
from core.tracing import current_fields, from_record, traced
from core.validation import error_record, summary
from handlers.errors import PermanentError, TransientError
from tasks import changes, job_attempts, job_index, loop, metrics
from tasks.claims import JOB_CLAIM, claim
from tasks.context import JobContext
from tasks.deliveries import CALLBACK_POLICY, add_delivery, job_event
from tasks.endpoints import JOB_SOURCE, Endpoint, EndpointCache, load_all, offer
from tasks.keys import Keys
from tasks.pipelined import Commands, PipelinedRedis
from tasks.protocol import job_message
from tasks.queues import queue_for
from tasks.runners import RUNNERS
from tasks.store import decode, encode, now_iso

log = logging.getLogger(__name__)

# More than any worker's thread count (tasks/queues.py WORKER_PROFILES).
WORKER_REDIS_CONNECTIONS = 1100


@lru_cache
def worker_redis() -> redis.Redis:
    """This process's Redis client (redis-py pools re-connect after a fork).

    A blocking pool as large as the biggest thread pool: redis-py's default pool raises once 100
    connections are out, which in a 1000-thread worker left jobs `running` after their work was
    done; here a thread waits for a connection instead.
    """
    settings = get_settings()
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_address,
        max_connections=WORKER_REDIS_CONNECTIONS,
        timeout=30,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


_fast: tuple[int, PipelinedRedis] | None = None


def fast_redis() -> PipelinedRedis:
    """This process's pipelined Redis connection, for coroutines on the process loop.

    A job's claim and its final write travel here rather than through `worker_redis`: in the loop
    pool (tasks/pool.py) a blocking call would stall every task of the process on the loop
    thread, and from any pool one shared pipelined socket costs less than a pooled round trip.
    """
    global _fast
    if _fast is None or _fast[0] != os.getpid():
        _fast = (os.getpid(), PipelinedRedis(get_settings().redis_address, timeout=10.0))
    return _fast[1]


@lru_cache
def keys() -> Keys:
    """Key names under the configured prefix."""
    return Keys(get_settings().redis_key_prefix)


endpoint_cache = EndpointCache()


def endpoints_at(version: bytes | str | None) -> tuple[Endpoint, ...]:
    """The endpoints as of ``version`` (just read): this process's copy, reloaded on a change."""
    return endpoint_cache.given(version, lambda: load_all(worker_redis(), keys()))


async def _write_if_current(writes: Commands, expected: bytes | None) -> tuple[bool, Any]:
    """Run ``writes`` if the endpoints are still at ``expected``; (done, version seen).

    The check and the write share one hop onto the loop: a separate hop for the check alone
    cost a threads-pool job more than its write (bench/README.md, fan-out).
    """
    fast = fast_redis()
    version = await fast.execute("GET", keys().endpoints_version)
    if version != expected:
        return False, version
    await fast.transaction(writes)
    return True, version


def _write_offering(
    writes: Commands, offering: Callable[[Commands, tuple[Endpoint, ...]], Any]
) -> None:
    """Run ``writes`` with ``offering``'s deliveries to the current endpoints, in one MULTI."""
    version, endpoints = endpoint_cache.version, endpoint_cache.endpoints
    while True:
        batch = Commands()
        batch.items = list(writes.items)
        offering(batch, endpoints)
        try:
            done, seen = loop.run(_write_if_current(batch, version))
        except TimeLimitExceeded:
            # past a task's hard limit every wait on the loop is cut short (tasks/loop.py), the
            # version's too; the writes in hand are still sent, as a final write always was
            loop.run(fast_redis().transaction(batch))
            return
        if done:
            return
        version, endpoints = seen, endpoints_at(seen)


@contextmanager
def requeued_if_redis_fails() -> Iterator[None]:
    """Hand the message back, not ack it, when a record cannot be read or written.

    Celery acks a task that raised (acks_late acks failures too), so a Redis outage between a
    job's work and its final write would leave the job `running` with no message left to finish
    it. Rejected with requeue, the message goes back to the queue, or, if Redis cannot even take
    it back, stays among the unacked and returns after the visibility timeout: the job is claimed
    again (another attempt) once Redis answers. A final write that did land makes that claim a
    no-op, so nothing runs twice that had finished.
    """
    try:
        yield
    except redis.RedisError as exc:
        log.warning("Redis failed mid-task (%s); the message goes back for another try", exc)
        raise Reject(exc, requeue=True) from exc


def run_job(job_id: str) -> str | None:
    """Run job ``job_id`` once; returns the status it ended in (None if it was not runnable)."""
    ttl = get_settings().job_ttl_seconds
    key, channel = keys().job(job_id), keys().job_changes(job_id)
    # the claim moves the job to running's index set too (tasks/job_index.py)
    args = (now_iso(), ttl, keys().jobs_by_prefix, job_id)
    claiming = claim(
        fast_redis(), JOB_CLAIM, key, *args, channel=channel, index=keys().jobs_by_time
    )
    fields = loop.run(claiming)
    if fields is None:
        log.info("job %s is unknown or already final; message dropped", job_id)
        return None
    job = decode(fields)
    logs.bind(job_id=job_id, kind=job["kind"], attempt=int(job["attempts"]), queue=_queue(job))
    metrics.job_claimed(job)
    # this run is a span of the job's trace: log lines and the callback it queues carry it
    span = {
        "gateway.job_id": job_id,
        "gateway.kind": job["kind"],
        "gateway.attempt": job["attempts"],
    }
    with traced(from_record(job), "job.run", kind="consumer", attributes=span):
        return _run_claimed(job_id, job)


def _run_claimed(job_id: str, job: dict[str, Any]) -> str:
    kind = KINDS.get(job["kind"])
    if kind is None:
        error = error_record("unknown_kind", f"no kind {job['kind']!r}")
        return _finish(job, JobStatus.FAILED, error=error)
    attempt = int(job["attempts"])
    ctx = JobContext(job_id, attempt, lambda pct: _progress(job_id, pct))
    try:
        result = _call(kind, job["payload"], ctx)
    except TransientError as exc:
        error = error_record(exc.code, exc.detail)
        if attempt >= int(job["max_attempts"]):
            return _finish(job, JobStatus.DEAD, error=error)
        delay = policy_for(kind.name, kind.retry).delay(attempt, exc.retry_after)
        return _retry(job, kind, delay, error)
    except PermanentError as exc:
        return _finish(job, JobStatus.FAILED, error=error_record(exc.code, exc.detail))
    except ValidationError as exc:  # where and what only: pydantic's text echoes the payload
        error = error_record("invalid_payload", summary(exc, "payload"))
        return _finish(job, JobStatus.FAILED, error=error)
    except Exception as exc:  # a bug in a handler: retrying it would fail the same way
        log.exception("job %s (%s) raised", job_id, job["kind"])
        error = error_record("internal_error", type(exc).__name__)
        return _finish(job, JobStatus.FAILED, error=error)
    return _finish(job, JobStatus.SUCCEEDED, result=result)


def _call(kind: Kind, payload: Any, ctx: JobContext) -> Any:
    out = RUNNERS[kind.name](kind.input.model_validate(payload), ctx)
    if inspect.iscoroutine(out):
        out = loop.run(out)
    return out.model_dump(mode="json") if isinstance(out, BaseModel) else out


def _progress(job_id: str, pct: int) -> None:
    with worker_redis().pipeline(transaction=True) as pipe:
        pipe.hset(keys().job(job_id), "progress", max(0, min(100, int(pct))))
        pipe.publish(keys().job_changes(job_id), changes.PROGRESS)
        pipe.execute()


def _retry(job: dict[str, Any], kind: Kind, delay: float, error: dict[str, str]) -> str:
    due = time.time() + delay
    queue = queue_for(kind.task)
    message = job_message(kind.task, job["id"], queue, retries=job["attempts"])
    writes = Commands()
    fields = {"status": JobStatus.RETRYING, "error": error}
    job_index.ended(writes, keys(), job, JobStatus.RETRYING)
    writes.hset(keys().job(job["id"]), mapping=encode(fields))
    attempt = job_attempts.entry(job, JobStatus.RETRYING, now_iso(), error)
    job_attempts.append(writes, keys(), job["id"], attempt, get_settings().job_ttl_seconds)
    writes.zadd(keys().schedule, {f"{queue}\n{message}": due})
    changes.changed(writes, keys(), job["id"], JobStatus.RETRYING)
    changes.count(writes, keys(), "retried")
    loop.run(fast_redis().transaction(writes))
    log.info(
        "job %s attempt %s failed (%s); retry in %.1fs",
        job["id"],
        job["attempts"],
        error["code"],
        delay,
    )
    metrics.job_retried(job)
    return JobStatus.RETRYING


def _finish(
    job: dict[str, Any],
    status: JobStatus,
    *,
    result: Any = None,
    error: dict[str, str] | None = None,
) -> str:
    fields = {"status": status, "finished_at": now_iso(), "result": result, "error": error}
    if status == JobStatus.SUCCEEDED:
        fields["progress"] = 100
    key = keys().job(job["id"])
    writes = Commands()
    job_index.ended(writes, keys(), job, status)
    writes.hset(key, mapping=encode(fields))
    attempt = job_attempts.entry(job, status, fields["finished_at"], error)
    body = job_event(job, status, result, error)
    parent, owner = f"job:{job['id']}", job.get("owner") or ""
    max_attempts = policy_for("callbacks", CALLBACK_POLICY).max_attempts
    ttl = get_settings().job_ttl_seconds
    if job.get("callback_url"):
        # in the same transaction: a final job always has its callback queued
        add_delivery(
            writes,
            keys(),
            url=job["callback_url"],
            body=body,
            parent=parent,
            owner=owner,
            max_attempts=max_attempts,
            ttl=ttl,
            **current_fields(),
        )
    if status in JOB_DEAD_LETTER:
        # dead letters keep their job record until replayed or purged
        writes.persist(key)
        writes.zadd(keys().dead_letters, {f"job:{job['id']}": time.time()})
        writes.hincrby(keys().dead_letter_counts, str(job["kind"]))  # tasks/monitor.py
        job_attempts.append(writes, keys(), job["id"], attempt, None)
    else:
        writes.expire(key, get_settings().job_ttl_seconds)
        job_attempts.append(writes, keys(), job["id"], attempt, ttl)
    changes.changed(writes, keys(), job["id"], status)
    changes.count(writes, keys(), status)
    # and its outcome offered to every endpoint that subscribed to it, in the same transaction
    _write_offering(
        writes,
        lambda batch, endpoints: offer(
            batch,
            keys(),
            endpoints,
            event_type=body["type"],
            source=JOB_SOURCE,
            body=body,
            parent=parent,
            owner=owner,
            max_attempts=max_attempts,
            ttl=ttl,
            **current_fields(),
        ),
    )
    metrics.job_finished(job, status, error)
    return status


def _queue(job: dict[str, Any]) -> str | None:
    kind = KINDS.get(job["kind"])
    return queue_for(kind.task) if kind else None
