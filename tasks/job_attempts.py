"""A job's attempts, one by one: when each started and ended, how it ended, and its error.

The record keeps only the latest attempt's times and error; the timeline a person reads on the
job page needs every one. Each attempt that ends appends one JSON entry to ``Keys.job_attempts``
in the transaction that writes its outcome (tasks/runtime.py ``_retry``/``_finish``), so the list
and the record never disagree; the list lives as long as the record (persisted while a dead
letter, given the record's TTL again on replay). An attempt that never ended (its worker died)
leaves no entry: the claim of the next one counted it, so the timeline shows it as lost.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from core.statuses import JobStatus
from tasks.keys import Keys
from tasks.pipelined import Commands
from tasks.protocol import dumps


def entry(job: dict[str, Any], outcome: str, ended_at: str, error: Any) -> str:
    """The JSON entry of the attempt ``job`` (as claimed) ending in ``outcome`` at ``ended_at``."""
    return dumps(
        {
            "attempt": int(job.get("attempts") or 0),
            "started_at": job.get("started_at"),
            "ended_at": ended_at,
            "outcome": outcome,
            "error": error,
        }
    )


def append(writes: Commands, keys: Keys, job_id: str, text: str, ttl: int | None) -> None:
    """Add appending ``text`` to the job's attempts to ``writes``; ``ttl`` None: persisted."""
    key = keys.job_attempts(job_id)
    writes.rpush(key, text)
    if ttl is None:
        writes.persist(key)
    else:
        writes.expire(key, ttl)


async def timeline(client: Redis, keys: Keys, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every attempt of the job ``record`` (decoded), oldest first: ended ones from the list,
    the one running now from the record, and a 'lost' entry for each that left no outcome."""
    raw = await client.lrange(keys.job_attempts(str(record["id"])), 0, -1)
    ended = {int(item["attempt"]): item for item in map(json.loads, raw)}
    attempts = int(record.get("attempts") or 0)
    out: list[dict[str, Any]] = []
    for number in range(1, max([attempts, *ended]) + 1):
        if number in ended:
            out.append(ended[number])
        elif number == attempts and record.get("status") == JobStatus.RUNNING:
            out.append(_open(number, record.get("started_at"), JobStatus.RUNNING))
        else:
            out.append(_open(number, None, "lost"))
    return out


def _open(number: int, started_at: Any, outcome: str) -> dict[str, Any]:
    return {
        "attempt": number,
        "started_at": started_at,
        "ended_at": None,
        "outcome": outcome,
        "error": None,
    }
