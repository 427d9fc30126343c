"""Job changes: every status change is published on the job's channel and counted by minute."""

from __future__ import annotations

import redis

from core.statuses import JobStatus
from tasks import changes
from tasks.claims import JOB_CLAIM, claim_sync
from tasks.keys import Keys
from tasks.store import NewJob, create_sync
from tests.conftest import wait_for

KEYS = Keys("changes-test:")


def _messages(pubsub: redis.client.PubSub, count: int) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []

    def more() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            got.append((message["channel"].decode(), message["data"].decode()))
        return len(got) >= count

    wait_for(more, timeout=5)
    return got


def test_create_and_claim_publish_and_count(quiet_redis: redis.Redis) -> None:
    pubsub = quiet_redis.pubsub()
    pubsub.psubscribe(KEYS.job_changes_pattern)
    wait_for(lambda: pubsub.get_message(timeout=0.1) is not None, timeout=5)  # psubscribe reply
    minute = changes.minute()
    before = int(quiet_redis.hget(KEYS.activity(minute), "accepted") or 0)
    job = NewJob(id="job-1", kind="echo", owner="o", payload={}, max_attempts=3)
    assert create_sync(quiet_redis, KEYS, 60, job, "message", "q-changes-test") is None
    claim_sync(
        quiet_redis,
        JOB_CLAIM,
        KEYS.job("job-1"),
        "now",
        60,
        KEYS.jobs_by_prefix,
        "job-1",
        channel=KEYS.job_changes("job-1"),
        index=KEYS.jobs_by_time,
    )
    assert _messages(pubsub, 2) == [
        (KEYS.job_changes("job-1"), JobStatus.QUEUED),
        (KEYS.job_changes("job-1"), JobStatus.RUNNING),
    ]
    counts = KEYS.activity(changes.minute())
    after = int(quiet_redis.hget(counts, "accepted") or 0)
    assert after == (before + 1 if changes.minute() == minute else 1)
    assert 0 < quiet_redis.ttl(counts) <= changes.ACTIVITY_TTL_SECONDS
    pubsub.close()
    quiet_redis.delete(KEYS.job("job-1"), "q-changes-test", KEYS.jobs_by_time)
    quiet_redis.delete(KEYS.jobs_by("echo", "queued"), KEYS.jobs_by("echo", "running"))
