"""Dead letters: jobs and deliveries that ended without success, listed and replayed.

The dead-letter index is a sorted set of 'job:<id>' / 'delivery:<id>' by time of death; the records
themselves are the job and delivery hashes (persisted while dead), so a dead letter keeps its
payload and last error. Replay moves it back to the start with the same id, atomically: a dead
letter replayed twice at once is replayed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis

from core.kinds import KINDS
from core.retry import policy_for
from core.statuses import DeliveryStatus, JobStatus
from tasks.claims import lua_string
from tasks.deliveries import CALLBACK_POLICY, DELIVER_TASK
from tasks.job_index import lua_move
from tasks.keys import Keys
from tasks.protocol import task_message
from tasks.queues import CALLBACKS
from tasks.store import decode, now_iso
from tasks.submit import dispatch

# a replayed job moves to queued's index set (tasks/job_index.py), read before its status changes
_TO_QUEUED = lua_move("KEYS[2]", "KEYS[6]", "ARGV[8]", "ARGV[9]", lua_string(JobStatus.QUEUED))
_REPLAY = f"""
-- KEYS: dead-letter zset, record hash, queue, dead letters by kind (tasks/monitor.py), the
--       record's change channel (a job's: tasks/changes.py), the all-jobs index and the job's
--       attempts (tasks/job_index.py, tasks/job_attempts.py)
-- ARGV: member, message, ttl, now, kind of record, attempts budget, kind counted under, the
--       index sets' prefix, the record's id
-- Attempts keep counting (they are a true count of executions); the budget starts afresh.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[4], ARGV[7], -1)
local cap = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0') + tonumber(ARGV[6])
if ARGV[5] == 'job' then
{_TO_QUEUED}  redis.call('EXPIRE', KEYS[7], ARGV[3])
  redis.call('HSET', KEYS[2], 'status', {lua_string(JobStatus.QUEUED)}, 'max_attempts', cap,
             'error', '', 'result', '', 'started_at', '', 'finished_at', '', 'progress', 0,
             'replayed_at', ARGV[4])
  redis.call('PUBLISH', KEYS[5], {lua_string(JobStatus.QUEUED)})
else
  redis.call('HSET', KEYS[2], 'status', {lua_string(DeliveryStatus.PENDING)}, 'max_attempts', cap,
             'finished_at', '', 'last_error', '', 'replayed_at', ARGV[4])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"""


def _record_key(keys: Keys, member: str) -> tuple[str, str]:
    """('job' | 'delivery', hash key) of a dead-letter member."""
    kind, _, ident = member.partition(":")
    return kind, keys.job(ident) if kind == "job" else keys.delivery(ident)


def _entry(member: str, record: dict[str, Any]) -> dict[str, Any]:
    kind, _, ident = member.partition(":")
    if kind == "job":
        return {
            "id": member,
            "type": "job",
            "kind": record.get("kind"),
            "status": record.get("status"),
            "attempts": record.get("attempts", 0),
            "failed_at": record.get("finished_at"),
            "error": record.get("error"),
            "payload": record.get("payload"),
            "ref": ident,
        }
    return {
        "id": member,
        "type": "delivery",
        "kind": "callback",
        "status": record.get("status"),
        "attempts": record.get("attempts", 0),
        "failed_at": record.get("finished_at"),
        "error": {"detail": record.get("last_error")},
        "payload": {"url": record.get("url"), "parent": record.get("parent")},
        "ref": ident,
    }


# the replay script's keys and args for one dead letter
ReplayCall = tuple[list[str], list[Any]]


class DeadLetters:
    """The API's side of the dead-letter store."""

    def __init__(self, redis: Redis, keys: Keys, ttl: int) -> None:
        self.redis, self.keys, self.ttl = redis, keys, ttl
        self._replay = redis.register_script(_REPLAY)

    async def list(
        self,
        *,
        kind: str | None,
        since: float,
        until: float,
        limit: int,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Dead letters in [since, until], oldest (or newest) first, optionally of one kind."""
        if newest_first:
            found = await self.redis.zrevrangebyscore(self.keys.dead_letters, until, since)
        else:
            found = await self.redis.zrangebyscore(self.keys.dead_letters, since, until)
        members = cast(list[bytes], found)
        out: list[dict[str, Any]] = []
        batch = 200
        for start in range(0, len(members), batch):
            chunk = members[start : start + batch]
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in chunk:
                    pipe.hgetall(_record_key(self.keys, member.decode())[1])
                records = await pipe.execute()
            for member, raw in zip(chunk, records, strict=True):
                if not raw:
                    continue
                entry = _entry(member.decode(), decode(raw))
                if kind is None or entry["kind"] == kind:
                    out.append(entry)
                    if len(out) >= limit:
                        return out
        return out

    async def get(self, member: str) -> dict[str, Any] | None:
        """One dead letter as listed, or None when ``member`` is not dead (now)."""
        record_kind, key = _record_key(self.keys, member)
        if record_kind not in ("job", "delivery"):
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.keys.dead_letters, member)
            pipe.hgetall(key)
            score, raw = await pipe.execute()
        if score is None or not raw:
            return None
        return _entry(member, decode(raw))

    async def replay(self, member: str) -> bool:
        """Start dead letter ``member`` again with the same id; False if it is not dead."""
        record_kind, key = _record_key(self.keys, member)
        raw = await self.redis.hgetall(key)
        if not raw or record_kind not in ("job", "delivery"):
            return False
        call = self.replay_call(member, decode(raw).get("kind"))
        if call is None:
            return False
        done = await self._replay(keys=call[0], args=call[1])
        return bool(done)

    def replay_call(self, member: str, job_kind: str | None) -> ReplayCall | None:
        """The replay script's keys and args for ``member`` (a job of ``job_kind``), or None.

        One place for them, so replaying one and replaying a range in batches
        (tasks/dead_letter_walk.py) run the same script the same way.
        """
        record_kind, key = _record_key(self.keys, member)
        ident = member.partition(":")[2]
        if record_kind == "job":
            spec = KINDS.get(str(job_kind))
            if spec is None:
                return None
            # the queue, message and budget a new job of its kind gets
            queue, message, budget = dispatch(spec, ident)
            counted = spec.name
        elif record_kind == "delivery":
            queue = CALLBACKS
            message = task_message(DELIVER_TASK, ident, queue, [ident])
            budget = policy_for("callbacks", CALLBACK_POLICY).max_attempts
            counted = "callback"
        else:
            return None
        keys = [
            self.keys.dead_letters,
            key,
            queue,
            self.keys.dead_letter_counts,
            self.keys.job_changes(ident),
            self.keys.jobs_by_time,
            self.keys.job_attempts(ident),
        ]
        index = [self.keys.jobs_by_prefix, ident]
        return keys, [member, message, self.ttl, now_iso(), record_kind, budget, counted, *index]

    async def replay_many(self, calls: Sequence[ReplayCall]) -> Sequence[bool]:
        """Run the replay script for each of ``calls`` (``replay_call``) in one round trip."""
        if not calls:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._replay(keys=keys, args=args, client=pipe)
            done = await pipe.execute()
        return [bool(one) for one in done]
