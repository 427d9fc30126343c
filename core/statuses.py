"""The status vocabularies of jobs, deliveries and events: each status is spelled here only.

Python compares against these members; the Lua scripts that move records along are generated from
the same sets (tasks/claims.py), so a status added or made final here changes Redis's side too.

A job::

    scheduled ──> queued ──┬──> running ──> succeeded
                retrying ──┘       ├──> retrying   TransientError, attempts left: waits in schedule
                                   ├──> failed     PermanentError, bad payload, a bug: not retried
                                   └──> dead       TransientError, no attempts left

A delivery (one outbound signed POST: a job's callback or a forwarded event)::

     pending ──┬──> delivering ──> delivered
    retrying ──┘       ├──> retrying   a failed attempt, attempts left: waits in the schedule
                       ├──> failed     410 Gone, or an address the guard refuses: never retried
                       └──> dead       a failed attempt, no attempts left

An event (one inbound webhook)::

    received ──> processing ──> routed    every matched route made its deliveries / job
       │  ^           ├──> ignored        no route matches the type
       │  └─(retry)───┤                   processing itself failed, attempts left
       │              └──> failed         a route could not be carried out, or retries ran out
       └──> ignored                       at once: a type the source does not accept

An endpoint (a subscriber the operator registered)::

    enabled ──> paused      N failures in a row: its deliveries wait; one probe per interval,
       ^          │         a success resumes it
       └──────────┤
    disabled <────┘         failing for ENDPOINT_DISABLE_AFTER, a 410 Gone, or the operator;
                            only the operator enables it again (and what it held is sent)

A message for a final record is dropped, so a re-delivered message never runs finished work
again. Failed and dead jobs and deliveries are dead letters (``*_DEAD_LETTER``): a replay starts
one again under the same id, as ``queued`` (a job) or ``pending`` (a delivery).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobStatus(StrEnum):
    """Where a job is in its life."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"


class DeliveryStatus(StrEnum):
    """Where an outbound delivery is in its life."""

    PENDING = "pending"
    DELIVERING = "delivering"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"


class EventStatus(StrEnum):
    """Where an inbound event is in its life."""

    RECEIVED = "received"
    PROCESSING = "processing"
    ROUTED = "routed"
    IGNORED = "ignored"
    FAILED = "failed"


class EndpointStatus(StrEnum):
    """Whether an endpoint is sent to."""

    ENABLED = "enabled"
    PAUSED = "paused"
    DISABLED = "disabled"


JOB_FINAL: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD})
JOB_DEAD_LETTER: Final = JOB_FINAL - {JobStatus.SUCCEEDED}

DELIVERY_FINAL: Final = frozenset(
    {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.DEAD}
)
DELIVERY_DEAD_LETTER: Final = DELIVERY_FINAL - {DeliveryStatus.DELIVERED}

EVENT_FINAL: Final = frozenset({EventStatus.ROUTED, EventStatus.IGNORED, EventStatus.FAILED})
