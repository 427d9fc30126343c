"""What a job's change tells the rest of the system: a message on its channel, a per-minute count.

Every write that changes a job's status (or its progress) also publishes, in the same script or
transaction, one message on the job's channel (``Keys.job_changes``): the job's new status
(``queued``, ``running``, ``retrying``, ``succeeded``, ``failed``, ``dead``) or ``progress``. The
message only says *that* the job changed; a listener reads the record for what it is now, so a
listener that missed messages (it subscribed late, Redis dropped it) is never wrong, only late,
and subscribing before the first read closes that gap. Pub/sub keeps nothing: a message with no
listener costs Redis one lookup.

Per-minute counts (``Keys.activity``, one hash a minute) are what the console's last-hour chart
draws: ``accepted`` when a job is recorded, then one of ``succeeded``, ``failed``, ``dead``,
``retried`` as each attempt ends; each kept two hours.
"""

from __future__ import annotations

import time

from tasks.keys import Keys
from tasks.pipelined import Commands

PROGRESS = "progress"
ACTIVITY = ("accepted", "succeeded", "failed", "dead", "retried")
ACTIVITY_TTL_SECONDS = 2 * 3600


def minute(now: float | None = None) -> int:
    """The minute ``now`` (epoch seconds, default the current time) falls in: epoch // 60."""
    return int((time.time() if now is None else now) // 60)


def changed(writes: Commands, keys: Keys, job_id: str, message: str) -> None:
    """Add the publish of ``message`` (a status or PROGRESS) for job ``job_id`` to ``writes``."""
    writes.publish(keys.job_changes(job_id), message)


def count(writes: Commands, keys: Keys, what: str) -> None:
    """Add one ``what`` (one of ACTIVITY) to this minute's counts, in ``writes``."""
    key = keys.activity(minute())
    writes.hincrby(key, what)
    writes.expire(key, ACTIVITY_TTL_SECONDS)
