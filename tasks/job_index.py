"""Job indexes: sorted sets kept as records are written, so the console lists jobs at any scale.

Two kinds of sorted set, every score the job's creation time in epoch milliseconds:

- ``Keys.jobs_by_time``: every job. Added by the create script, never moved.
- ``Keys.jobs_by(kind, status)``: the jobs of one kind now in one status. The create script adds
  the job; every status change (claim, retry, finish, dead-letter replay) moves it in the same
  script or transaction as the status itself, so no write costs an extra round trip. The claim
  and the replay scripts move by what the record holds (ZREM from the set of its status, ZADD to
  the new one with the score from ``jobs_by_time``); an attempt's end (``ended``), written by the
  worker holding the claim, moves from running's set with plain commands, the score computed
  from the record's created_at (no Lua there: the worker knows both).

Why this shape: the create script, the hot path, pays two ZADDs (O(log N)); a move pays a ZREM
and a ZADD (and the claim's a ZSCORE). A filter by kind and status reads one set; by kind alone,
that kind's seven sets; by status alone, one set per kind; unfiltered, the one big set. Reads
merge at most a few sets of ``limit + 1`` entries each, in one MULTI (one consistent view),
whatever the number of records: ZREVRANGEBYSCORE with LIMIT is O(log N + limit). Per-kind and
per-status sets alone would make each move four writes, and a kind+status filter an intersection.

Pages are cut by a cursor naming the last job shown (``<score>:<id>``): jobs created meanwhile
(higher scores) never shift a later page, and ties at one millisecond are ordered by id, as Redis
orders equal scores. A listed job whose record expired (job TTL) is skipped and its entries
removed; the reaper (tasks/reaper.py) trims every set by age, so what nobody listed goes too: the
index covers jobs created within ``job_ttl_seconds`` (dead letters older than that are on the
dead-letters page). Key names are computed in the scripts from ``Keys.jobs_by_prefix`` and the
record's kind, as the schedule mover does (one Redis; a Redis Cluster would need hash tags).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from redis.asyncio import Redis

from core.statuses import JobStatus
from tasks.keys import Keys
from tasks.paging import InvalidCursor
from tasks.pipelined import Commands

# what a listing reads of each record (a row of the console's table)
SUMMARY_FIELDS = ("id", "kind", "status", "attempts", "max_attempts", "created_at", "finished_at")
# members sharing the cursor's millisecond read back in one go (thousands in one ms: not seen)
_TIES = 1000
_ROUNDS = 8  # read rounds a page may take when listed records keep turning out expired


def score_of(created_at: str) -> int:
    """The index score (epoch ms) of a record's ``created_at`` (ISO 8601, as stored)."""
    moment = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return round(moment.timestamp() * 1000)


def lua_move(record: str, index_all: str, prefix: str, job_id: str, new_status: str) -> str:
    """Lua moving a job to ``new_status``'s set; the expressions name the record's key, the
    all-jobs set, ``Keys.jobs_by_prefix``, the id and the new status. Run it before the status
    is written: it reads the status the job is leaving from the record."""
    return f"""local moving = redis.call('HMGET', {record}, 'kind', 'status')
local score = redis.call('ZSCORE', {index_all}, {job_id})
if moving[1] and moving[2] and score then
  redis.call('ZREM', {prefix} .. moving[1] .. ':' .. moving[2], {job_id})
  redis.call('ZADD', {prefix} .. moving[1] .. ':' .. {new_status}, score, {job_id})
end
"""


def ended(writes: Commands, keys: Keys, job: dict[str, Any], status: str) -> None:
    """Add the move of the claimed ``job`` (a decoded record) from running's set to ``status``'s
    (an attempt's end: retrying or final) to ``writes``.

    Plain commands, not the Lua move: the worker holding the claim knows the set the job is in
    (its claim moved it to running) and its score (its created_at), so Redis reads nothing. Two
    runs of one job ending at once (a message redelivered while its first worker still ran) may
    leave it in two sets; listing checks each job's status against its filter, so such an extra
    entry is skipped, and trimmed with its age.
    """
    created = job.get("created_at")
    if not created:
        return
    kind, job_id = str(job["kind"]), str(job["id"])
    writes.items.append(("ZREM", keys.jobs_by(kind, JobStatus.RUNNING), job_id))
    writes.zadd(keys.jobs_by(kind, status), {job_id: score_of(str(created))})


@dataclass(frozen=True)
class Filters:
    """What a listing asks for; None means any. Times are epoch ms, both ends included."""

    kind: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def sets(self, keys: Keys, kinds: Iterable[str]) -> list[str]:
        """The index sets holding every job these filters can match."""
        if self.kind and self.status:
            return [keys.jobs_by(self.kind, self.status)]
        if self.kind:
            return [keys.jobs_by(self.kind, status) for status in JobStatus]
        if self.status:
            return [keys.jobs_by(kind, self.status) for kind in kinds]
        return [keys.jobs_by_time]

    def matches(self, summary: dict[str, Any]) -> bool:
        """Whether a job's summary (as listed) is one these filters ask for."""
        if self.kind and summary.get("kind") != self.kind:
            return False
        if self.status and summary.get("status") != self.status:
            return False
        created = summary.get("created_ms")
        if created is None:
            return False
        if self.since_ms is not None and created < self.since_ms:
            return False
        return self.until_ms is None or created <= self.until_ms


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first, and the cursor of the next (None: this is the last)."""

    jobs: list[dict[str, Any]]
    next_cursor: str | None


def parse_cursor(cursor: str) -> tuple[int, str]:
    """(score, id) of a cursor handed out with a page; InvalidCursor for anything else."""
    score_text, sep, member = cursor.partition(":")
    if not sep or not (score_text.isascii() and score_text.isdigit()) or not member:
        raise InvalidCursor(cursor)
    return int(score_text), member


def summary_of(values: Sequence[Any]) -> dict[str, Any] | None:
    """A job's summary from HMGET of SUMMARY_FIELDS (None when the record is gone)."""
    texts = [v.decode() if isinstance(v, bytes) else v for v in values]
    if texts[0] is None:
        return None
    row: dict[str, Any] = dict(zip(SUMMARY_FIELDS, texts, strict=True))
    row["attempts"] = int(row["attempts"] or 0)
    row["max_attempts"] = int(row["max_attempts"] or 0)
    row["created_ms"] = score_of(row["created_at"]) if row["created_at"] else None
    return row


async def list_jobs(
    client: Redis,
    keys: Keys,
    filters: Filters,
    *,
    kinds: Iterable[str],
    limit: int = 50,
    cursor: str | None = None,
) -> JobPage:
    """A page of job summaries, newest first, after ``cursor`` (InvalidCursor if not ours)."""
    after = parse_cursor(cursor) if cursor else None
    sets = filters.sets(keys, kinds)
    jobs: list[dict[str, Any]] = []
    for _ in range(_ROUNDS):
        found, more = await _candidates(client, sets, filters, after, limit - len(jobs))
        if not found:
            return JobPage(jobs, None)
        async with client.pipeline(transaction=False) as pipe:
            for _score, job_id, _key in found:
                pipe.hmget(keys.job(job_id), SUMMARY_FIELDS)
            rows = await pipe.execute()
        expired: list[tuple[str, str]] = []
        for (_score, job_id, key), values in zip(found, rows, strict=True):
            row = summary_of(values)
            if row is None:
                expired.append((key, job_id))
            elif filters.matches(row):  # a job that moved on since the index was read: skipped
                jobs.append(row)
        if expired:
            await _forget(client, keys, expired)
        after = (found[-1][0], found[-1][1])
        if not more:
            return JobPage(jobs, None)
        if len(jobs) >= limit:
            return JobPage(jobs, f"{after[0]}:{after[1]}")
    # records kept turning out expired: hand the rest over as the next page
    return JobPage(jobs, f"{after[0]}:{after[1]}" if after else None)


async def _candidates(
    client: Redis,
    sets: list[str],
    filters: Filters,
    after: tuple[int, str] | None,
    limit: int,
) -> tuple[list[tuple[int, str, str]], bool]:
    """The next ``limit`` (score, id, set) across ``sets`` after ``after``; and whether more."""
    top: int | str = "+inf" if filters.until_ms is None else filters.until_ms
    bottom: int | str = "-inf" if filters.since_ms is None else filters.since_ms
    ties = after is not None and (filters.until_ms is None or after[0] <= filters.until_ms)
    if after is not None:
        top = min(after[0], filters.until_ms) if filters.until_ms is not None else after[0]
    async with client.pipeline(transaction=True) as pipe:  # one consistent view of every set
        for key in sets:
            if ties and after is not None:
                pipe.zrevrangebyscore(key, after[0], after[0], start=0, num=_TIES)
                pipe.zrevrangebyscore(
                    key, f"({after[0]}", bottom, start=0, num=limit + 1, withscores=True
                )
            else:
                pipe.zrevrangebyscore(key, top, bottom, start=0, num=limit + 1, withscores=True)
        replies = await pipe.execute()
    merged: dict[str, tuple[int, str, str]] = {}
    step = 2 if ties else 1
    for index, key in enumerate(sets):
        if ties and after is not None:
            for raw in replies[index * step]:
                member = raw.decode()
                if member < after[1]:
                    merged[member] = (after[0], member, key)
        for raw, score in replies[index * step + step - 1]:
            member = raw.decode()
            merged[member] = (int(score), member, key)
    ordered = sorted(merged.values(), reverse=True)
    return ordered[:limit], len(ordered) > limit


async def _forget(client: Redis, keys: Keys, entries: list[tuple[str, str]]) -> None:
    """Drop the index entries of jobs whose records expired (found while listing)."""
    async with client.pipeline(transaction=False) as pipe:
        for key, job_id in entries:
            pipe.zrem(key, job_id)
            pipe.zrem(keys.jobs_by_time, job_id)
        await pipe.execute()


def index_sets(keys: Keys, kinds: Iterable[str]) -> list[str]:
    """Every index set: the all-jobs set and one per (kind, status)."""
    return [keys.jobs_by_time] + [keys.jobs_by(k, s) for k in kinds for s in JobStatus]


def trim(client: redis.Redis, keys: Keys, kinds: Iterable[str], ttl: int) -> int:
    """Remove every index entry older than ``ttl`` seconds (the reaper's pass); how many went."""
    cutoff = int((time.time() - ttl) * 1000)
    pipe = client.pipeline(transaction=False)
    for key in index_sets(keys, kinds):
        pipe.zremrangebyscore(key, "-inf", f"({cutoff}")
    return sum(int(n) for n in pipe.execute())
