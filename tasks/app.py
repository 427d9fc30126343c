"""The Celery app: JSON only, acks after the work, nothing lost when a worker dies."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue

from core import logs
from core.settings import get_settings
from tasks import metrics
from tasks.queues import DEFAULT, FILES, QUEUES, ROUTES, queue_for


def create_celery() -> Celery:
    """Build the app from settings."""
    settings = get_settings()
    url = settings.redis_address
    app = Celery(
        "gateway",
        broker=url,
        backend=url,
        include=[
            "tasks.example",
            "tasks.jobs",
            "tasks.callbacks",
            "tasks.periodic",
            "tasks.webhooks",
        ],
    )
    app.conf.update(
        # Never pickle: whoever can write to Redis could run code in every worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Ack after the work, and put the message back if the worker process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message reserved per pool slot: long tasks don't hold others hostage.
        worker_prefetch_multiplier=1,
        # Only the example's `add` keeps a Celery result; jobs keep theirs in the job record.
        task_ignore_result=True,
        result_expires=settings.result_expires_seconds,
        broker_transport_options={
            # Must exceed the longest task (files' time limit) or a running task is delivered
            # twice; retry delays never ride on ETA/countdown, so it need not cover them
            # (tasks/schedule.py).
            "visibility_timeout": settings.visibility_timeout_seconds,
            # Look for messages of dead workers (unacked past the visibility timeout) every 10 s;
            # kombu's default scans only every 10th sweep, about every 100 s.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # a killed worker's messages come back in seconds, not after the visibility timeout
            # (tasks/liveness.py)
            "liveness_ttl": settings.worker_liveness_ttl_seconds,
            "reap_interval": settings.worker_reap_interval_seconds,
            # held past its queue's time limit by a live worker: given back as a last resort
            "queue_time_limits": {
                queue: float(
                    settings.files_task_time_limit_seconds
                    if queue == FILES
                    else settings.default_task_time_limit_seconds
                )
                for queue in QUEUES
            },
        },
        broker_connection_retry_on_startup=True,
        # a worker outlives any Redis outage: it keeps reconnecting (Celery's default gives up
        # after 100 attempts and the worker exits)
        broker_connection_max_retries=None,
        # ... and rides out a Redis that answers but refuses writes (OOM at maxmemory, READONLY,
        # MISCONF) when it meets one declaring its queues at start-up or on a reconnect (kombu does
        # that inside MULTI, refused whole when Redis is full): retried like a lost connection
        # instead of "Unrecoverable error". The consuming loop pauses on them itself (broker.py)
        broker_channel_error_retry=True,
        # kombu's Redis transport minus a client per call and a round trip per ack (tasks/broker.py)
        broker_transport="tasks.broker:Transport",
        task_default_queue=DEFAULT,
        task_queues=[Queue(name) for name in QUEUES],
        task_routes=dict(ROUTES),
        task_time_limit=settings.default_task_time_limit_seconds,
        worker_send_task_events=False,
        # no per-task rate-limit bookkeeping on the consumer thread (we set no rate limits)
        worker_disable_rate_limits=True,
        task_send_sent_event=False,
        timezone="UTC",
        enable_utc=True,
    )
    return app


@signals.worker_shutdown.connect
def _stop_liveness(**_: Any) -> None:
    """A worker that exits cleanly stops renewing its liveness key and drops it."""
    from tasks import liveness

    liveness.stop()


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our log lines instead of Celery's (Celery configures nothing once this is connected):
    LOG_FORMAT, the ids of the work in play, secrets masked (core/logs.py). Worker and beat."""
    logs.configure(loglevel or "INFO")


@signals.task_prerun.connect
def _task_started(task: Any = None, **_: Any) -> None:
    logs.clear()  # nothing bound by the thread's previous task
    metrics.task_started(queue_for(task.name) if task is not None else DEFAULT)


@signals.task_postrun.connect
def _task_ended(task: Any = None, **_: Any) -> None:
    """After Celery's own line about the task: its ids are not carried into the next one."""
    metrics.task_ended(queue_for(task.name) if task is not None else DEFAULT)
    logs.clear()


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """Serve this worker's metrics once it consumes (`gateway worker --metrics-port`)."""
    if metrics.planned is not None:
        metrics.serve(*metrics.planned)


@signals.worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    """A prefork child's live gauges (in flight) stop counting when it exits."""
    metrics.child_exited(pid or os.getpid())


app = create_celery()
