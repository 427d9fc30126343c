"""Job records in Redis, and the atomic create-and-enqueue the gateway answers 202 after.

A job is one Redis hash (see keys.Keys.job). Creating it, claiming its Idempotency-Key and putting
its message on the queue (or in the schedule) happen in one Lua script: one round trip, and either
all of it is in Redis or none of it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from core.statuses import JobStatus
from tasks import changes
from tasks.keys import Keys
from tasks.pipelined import PipelinedRedis
from tasks.protocol import dumps

JSON_FIELDS = ("payload", "result", "error")

_CREATE = """
-- KEYS: job hash, queue list, schedule zset, idempotency key, this minute's counts, change channel,
--       the all-jobs index, the job's (kind, status) index (tasks/job_index.py)
-- ARGV: job ttl, message, due (0 = now), use idempotency (0/1), idempotency value, idem ttl,
--       the job's fields as one JSON object of strings (one argument: cheap to send),
--       the counts' ttl, the job's status, its index score (created, epoch ms), its id
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return existing end
  redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6])
end
local flat = {}
for name, value in pairs(cjson.decode(ARGV[7])) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
else
  redis.call('LPUSH', KEYS[2], ARGV[2])
end
redis.call('HINCRBY', KEYS[5], 'accepted', 1)
redis.call('EXPIRE', KEYS[5], ARGV[8])
redis.call('PUBLISH', KEYS[6], ARGV[9])
redis.call('ZADD', KEYS[7], ARGV[10], ARGV[11])
redis.call('ZADD', KEYS[8], ARGV[10], ARGV[11])
return false
"""


def now_iso(now: float | None = None) -> str:
    """The UTC time ``now`` (default: the current time) as ISO 8601, the form every timestamp is
    stored in (millisecond precision)."""
    ms = round((time.time() if now is None else now) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ms // 1000))}.{ms % 1000:03d}Z"


def encode(fields: dict[str, Any]) -> dict[Any, str]:
    """Job fields as hash values: JSON for structured fields, '' for None."""
    out: dict[Any, str] = {}
    for name, value in fields.items():
        if name in JSON_FIELDS:
            out[name] = dumps(value)
        else:
            out[name] = "" if value is None else str(value)
    return out


def decode(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A job hash back into typed fields."""
    record: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        text = value.decode() if isinstance(value, bytes) else value
        if name in JSON_FIELDS:
            record[name] = json.loads(text) if text else None
        elif name in ("attempts", "max_attempts", "progress"):
            record[name] = int(text) if text else 0
        else:
            record[name] = text or None
    return record


@dataclass(frozen=True)
class NewJob:
    """Everything needed to record and enqueue one job."""

    id: str
    kind: str
    owner: str
    payload: dict[str, Any]
    max_attempts: int
    callback_url: str | None = None
    due: float = 0.0  # epoch seconds; 0 = run now
    traceparent: str = ""  # the submitting span (core/tracing.py): each run is its child
    tracestate: str = ""


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key claim: the key and the hash of the body it was first sent with."""

    key: str
    body_sha256: str
    ttl: int


class JobStore:
    """The gateway's side of job records: create-and-enqueue, and read."""

    def __init__(self, redis: Redis, keys: Keys, job_ttl: int, fast: PipelinedRedis) -> None:
        self.redis = redis
        self.keys = keys
        self.job_ttl = job_ttl
        self.fast = fast
        self._create_sha = hashlib.sha1(_CREATE.encode()).hexdigest()  # noqa: S324 (Redis's id)

    async def create(
        self, job: NewJob, message: str, queue: str, idem: Idempotency | None = None
    ) -> tuple[str, str] | None:
        """Record and enqueue ``job``; for a seen Idempotency-Key, return (job id, body hash)."""
        keys, args = create_call(self.keys, self.job_ttl, job, message, queue, idem)
        return _existing(await self.fast.eval_script(_CREATE, self._create_sha, keys, args))

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """One job's record, or None."""
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return decode(raw) if raw else None


def create_call(
    keys: Keys, ttl: int, job: NewJob, message: str, queue: str, idem: Idempotency | None
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the create script for ``job``."""
    if job.due:  # a scheduled job's record outlives its schedule entry by the usual ttl
        ttl += max(0, math.ceil(job.due - time.time()))
    status = JobStatus.SCHEDULED if job.due else JobStatus.QUEUED
    created = time.time()
    fields = encode(
        {
            "id": job.id,
            "kind": job.kind,
            "owner": job.owner,
            "status": status,
            "attempts": 0,
            "max_attempts": job.max_attempts,
            "created_at": now_iso(created),
            "payload": job.payload,
            "callback_url": job.callback_url,
            "progress": 0,
            "traceparent": job.traceparent,
            "tracestate": job.tracestate,
        }
    )
    idem_key = keys.idempotency(job.owner, idem.key) if idem else keys.job(job.id)
    args = [
        ttl,
        f"{queue}\n{message}" if job.due else message,
        job.due,
        1 if idem else 0,
        f"{job.id} {idem.body_sha256}" if idem else "",
        idem.ttl if idem else 0,
        dumps(fields),
        changes.ACTIVITY_TTL_SECONDS,
        status,
        round(created * 1000),  # = job_index.score_of(created_at): the same millisecond
        job.id,
    ]
    counts, channel = keys.activity(changes.minute(created)), keys.job_changes(job.id)
    indexes = [keys.jobs_by_time, keys.jobs_by(job.kind, status)]
    return [keys.job(job.id), queue, keys.schedule, idem_key, counts, channel, *indexes], args


def create_sync(
    client: Any,
    keys: Keys,
    ttl: int,
    job: NewJob,
    message: str,
    queue: str,
    idem: Idempotency | None = None,
) -> tuple[str, str] | None:
    """``JobStore.create`` for synchronous callers (workers, beat)."""
    script_keys, args = create_call(keys, ttl, job, message, queue, idem)
    return _existing(client.eval(_CREATE, len(script_keys), *script_keys, *args))


def _existing(reply: Any) -> tuple[str, str] | None:
    if reply is None:
        return None
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    job_id, _, body_hash = text.partition(" ")
    return job_id, body_hash
