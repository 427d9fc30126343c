"""Running one job on a worker: claim it, call its handler, and move it along the status machine.

queued/retrying ──> running ──> succeeded
                      ├──> retrying  (TransientError, attempts left: waits in the schedule)
                      ├──> failed    (PermanentError, invalid payload, or a bug: not retried)
                      └──> dead      (TransientError, no attempts left)
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import redis
from celery.exceptions import Reject
from pydantic import BaseModel, ValidationError

from core.kinds import KINDS, Kind
from core.retry import policy_for
from core.settings import get_settings
from handlers.errors import PermanentError, TransientError
from tasks import loop
from tasks.context import JobContext
from tasks.deliveries import CALLBACK_POLICY, add_delivery, job_event
from tasks.keys import Keys
from tasks.pipelined import Commands, PipelinedRedis
from tasks.protocol import job_message
from tasks.queues import queue_for
from tasks.runners import RUNNERS
from tasks.store import decode, encode, now_iso

log = logging.getLogger(__name__)

# More than any worker's thread count (tasks/queues.py WORKER_PROFILES).
WORKER_REDIS_CONNECTIONS = 1100

_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'succeeded' or status == 'failed' or status == 'dead' then return false end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'error', '')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""


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


_START_SHA = hashlib.sha1(_START.encode()).hexdigest()  # noqa: S324 (Redis's script id)

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
    raw = loop.run(
        fast_redis().eval_script(
            _START, _START_SHA, [keys().job(job_id)], [now_iso(), get_settings().job_ttl_seconds]
        )
    )
    if not raw:
        log.info("job %s is unknown or already final; message dropped", job_id)
        return None
    job = decode(dict(zip(raw[::2], raw[1::2], strict=True)))
    kind = KINDS.get(job["kind"])
    if kind is None:
        return _finish(job, "failed", error=_error("unknown_kind", f"no kind {job['kind']!r}"))
    attempt = int(job["attempts"])
    ctx = JobContext(job_id, attempt, lambda pct: _progress(job_id, pct))
    try:
        result = _call(kind, job["payload"], ctx)
    except TransientError as exc:
        error = _error(exc.code, exc.detail)
        if attempt >= int(job["max_attempts"]):
            return _finish(job, "dead", error=error)
        delay = policy_for(kind.name, kind.retry).delay(attempt, exc.retry_after)
        return _retry(job, kind, delay, error)
    except PermanentError as exc:
        return _finish(job, "failed", error=_error(exc.code, exc.detail))
    except ValidationError as exc:
        return _finish(job, "failed", error=_error("invalid_payload", str(exc)))
    except Exception as exc:  # a bug in a handler: retrying it would fail the same way
        log.exception("job %s (%s) raised", job_id, job["kind"])
        return _finish(job, "failed", error=_error("internal_error", type(exc).__name__))
    return _finish(job, "succeeded", result=result)


def _call(kind: Kind, payload: Any, ctx: JobContext) -> Any:
    out = RUNNERS[kind.name](kind.input.model_validate(payload), ctx)
    if inspect.iscoroutine(out):
        out = loop.run(out)
    return out.model_dump(mode="json") if isinstance(out, BaseModel) else out


def _error(code: str, detail: str) -> dict[str, str]:
    return {"code": code, "detail": detail[:2000]}


def _progress(job_id: str, pct: int) -> None:
    worker_redis().hset(keys().job(job_id), "progress", max(0, min(100, int(pct))))


def _retry(job: dict[str, Any], kind: Kind, delay: float, error: dict[str, str]) -> str:
    due = time.time() + delay
    queue = queue_for(kind.task)
    message = job_message(kind.task, job["id"], queue, retries=job["attempts"])
    writes = Commands()
    writes.hset(keys().job(job["id"]), mapping=encode({"status": "retrying", "error": error}))
    writes.zadd(keys().schedule, {f"{queue}\n{message}": due})
    loop.run(fast_redis().transaction(writes))
    log.info(
        "job %s attempt %s failed (%s); retry in %.1fs",
        job["id"],
        job["attempts"],
        error["code"],
        delay,
    )
    return "retrying"


def _finish(
    job: dict[str, Any], status: str, *, result: Any = None, error: dict[str, str] | None = None
) -> str:
    fields = {"status": status, "finished_at": now_iso(), "result": result, "error": error}
    if status == "succeeded":
        fields["progress"] = 100
    key = keys().job(job["id"])
    writes = Commands()
    writes.hset(key, mapping=encode(fields))
    if job.get("callback_url"):
        # in the same transaction: a final job always has its callback queued
        add_delivery(
            writes,
            keys(),
            url=job["callback_url"],
            body=job_event(job, status, result, error),
            parent=f"job:{job['id']}",
            owner=job.get("owner") or "",
            max_attempts=policy_for("callbacks", CALLBACK_POLICY).max_attempts,
            ttl=get_settings().job_ttl_seconds,
        )
    if status == "succeeded":
        writes.expire(key, get_settings().job_ttl_seconds)
    else:
        # dead letters keep their job record until replayed or purged
        writes.persist(key)
        writes.zadd(keys().dead_letters, {f"job:{job['id']}": time.time()})
    loop.run(fast_redis().transaction(writes))
    return status
