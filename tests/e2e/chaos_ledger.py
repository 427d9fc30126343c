"""The chaos suite's ledger: where every accepted submission ended, read from the records the API
itself serves (job, event and delivery hashes, key names from tasks.keys), and what was in flight
in a worker when it was killed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from tasks.keys import Keys
from tests.e2e.chaos_clients import Submission

FINAL_JOB = frozenset({"succeeded", "failed", "dead"})
FINAL_EVENT = frozenset({"routed", "ignored", "failed"})
FINAL_DELIVERY = frozenset({"delivered", "failed", "dead"})


@dataclass
class Outcome:
    """Where one accepted submission is: its record's status, its jobs and its deliveries."""

    status: str | None = None  # None: no record (missing)
    jobs: list[tuple[str, str | None]] = field(default_factory=list)  # an event's jobs
    deliveries: list[tuple[str, str | None]] = field(default_factory=list)

    def settled(self, kind: str) -> bool:
        """Whether nothing more will happen to it by itself."""
        final = FINAL_EVENT if kind == "webhook" else FINAL_JOB
        if self.status not in final:
            return False
        if kind == "echo_cb" and self.status == "succeeded" and not self.deliveries:
            return False
        return all(s in FINAL_JOB for _, s in self.jobs) and all(
            s in FINAL_DELIVERY for _, s in self.deliveries
        )


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def read_outcomes(r: redis.Redis, keys: Keys, subs: list[Submission]) -> dict[int, Outcome]:
    """The current outcome of each accepted submission in ``subs`` (two pipelined round trips)."""
    accepted = [s for s in subs if s.id is not None]
    pipe = r.pipeline(transaction=False)
    for sub in accepted:
        assert sub.id is not None
        if sub.kind == "webhook":
            pipe.hmget(keys.event(sub.id), "status", "jobs")
            pipe.lrange(keys.deliveries(f"event:{sub.id}"), 0, -1)
        else:
            pipe.hmget(keys.job(sub.id), "status", "kind")
            pipe.lrange(keys.deliveries(f"job:{sub.id}"), 0, -1)
    replies = pipe.execute()
    outcomes: dict[int, Outcome] = {}
    pipe = r.pipeline(transaction=False)
    for sub, (status, jobs), delivery_ids in zip(
        accepted, replies[::2], replies[1::2], strict=True
    ):
        job_ids = json.loads(jobs) if sub.kind == "webhook" and jobs else []
        outcome = Outcome(_text(status))
        outcome.jobs = [(job_id, None) for job_id in job_ids]
        outcome.deliveries = [(_text(d) or "", None) for d in delivery_ids]
        outcomes[sub.index] = outcome
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
        for delivery_id, _ in outcome.deliveries:
            pipe.hget(keys.delivery(delivery_id), "status")
    statuses = iter(pipe.execute())
    for outcome in outcomes.values():
        outcome.jobs = [(job_id, _text(next(statuses))) for job_id, _ in outcome.jobs]
        outcome.deliveries = [(d, _text(next(statuses))) for d, _ in outcome.deliveries]
    return outcomes


def wait_settled(
    r: redis.Redis,
    keys: Keys,
    subs: list[Submission],
    deadline: float,
    still_coming: Callable[[], bool],
) -> dict[int, Outcome]:
    """Poll until every accepted submission is settled (and ``still_coming()`` is false), or the
    deadline passes; returns the last outcomes read. Redis errors (it may be down) are retried."""
    outcomes: dict[int, Outcome] = {}
    while True:
        pending = [s for s in subs if s.id is not None and s.index not in outcomes] + [
            s for s in subs if s.index in outcomes and not outcomes[s.index].settled(s.kind)
        ]
        try:
            outcomes.update(read_outcomes(r, keys, pending))
        except redis.RedisError:
            pass
        done = all(outcomes[s.index].settled(s.kind) for s in subs if s.index in outcomes)
        if (done and not still_coming()) or time.monotonic() > deadline:
            return outcomes
        time.sleep(1.0)


# What a worker holds while it works on a record: the record in this status.
IN_FLIGHT = {"default": "running", "webhooks": "processing", "callbacks": "delivering"}


def holdings(
    r: redis.Redis, keys: Keys, worker: str, subs: list[Submission]
) -> tuple[list[str], list[str]]:
    """Keys of the records ``worker``'s kind is working on now (status in IN_FLIGHT), and of all
    its kind's records not final yet (queued, prefetched or running); empty while Redis is down."""
    try:
        outcomes = read_outcomes(r, keys, [s for s in subs if s.id is not None])
    except redis.RedisError:
        return [], []
    mine: list[tuple[str, str | None]] = []
    for sub in subs:
        outcome = outcomes.get(sub.index)
        if outcome is None:
            continue
        if worker == "default":
            mine += outcome.jobs
            if sub.kind != "webhook":
                mine.append((str(sub.id), outcome.status))
        elif worker == "webhooks" and sub.kind == "webhook":
            mine.append((str(sub.id), outcome.status))
        elif worker == "callbacks":
            mine += outcome.deliveries
    key = {"default": keys.job, "webhooks": keys.event, "callbacks": keys.delivery}[worker]
    final = {"default": FINAL_JOB, "webhooks": FINAL_EVENT, "callbacks": FINAL_DELIVERY}[worker]
    held = [key(i) for i, status in mine if status == IN_FLIGHT[worker]]
    return held, [key(i) for i, status in mine if status not in final]


def all_final(r: redis.Redis, record_keys: list[str]) -> bool:
    """Whether every record in ``record_keys`` has a final status (False while Redis is down)."""
    final = FINAL_JOB | FINAL_EVENT | FINAL_DELIVERY
    try:
        pipe = r.pipeline(transaction=False)
        for key in record_keys:
            pipe.hget(key, "status")
        return all(_text(s) in final for s in pipe.execute())
    except redis.RedisError:
        return False


def count_records(r: redis.Redis, keys: Keys) -> tuple[int, int]:
    """How many job and event records there are in all (a retry that made work twice shows)."""
    jobs = sum(1 for _ in r.scan_iter(match=keys.job("*"), count=1000))
    return jobs, sum(1 for _ in r.scan_iter(match=keys.event("*"), count=1000))


def end_state(sub: Submission, outcomes: dict[int, Outcome]) -> str:
    """Where ``sub`` ended: its record's status, 'missing' (no record) or 'not accepted'."""
    if sub.id is None:
        return "not accepted"
    outcome = outcomes.get(sub.index)
    return (outcome.status if outcome else None) or "missing"


def tally(subs: list[Submission], outcomes: dict[int, Outcome]) -> dict[str, Counter[str]]:
    """kind -> Counter of end states."""
    counts: dict[str, Counter[str]] = {}
    for sub in subs:
        counts.setdefault(sub.kind, Counter())[end_state(sub, outcomes)] += 1
    return counts
