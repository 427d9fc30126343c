"""Thin Celery tasks: one per job kind, each only handing the job id to the runtime."""

from __future__ import annotations

from typing import Any

from celery import signals

from core.kinds import KINDS
from core.settings import get_settings
from tasks.app import app
from tasks.clients import close_clients
from tasks.queues import FILES, queue_for
from tasks.runtime import keys, requeued_if_redis_fails, run_job, worker_redis
from tasks.schedule import Mover


def _register(task_name: str) -> None:
    # files' work takes minutes: its own hard limit (below the visibility timeout, see settings)
    limit = (
        get_settings().files_task_time_limit_seconds
        if queue_for(task_name) == FILES
        else get_settings().default_task_time_limit_seconds
    )

    @app.task(name=task_name, time_limit=limit)
    def run(job_id: str) -> str | None:
        with requeued_if_redis_fails():
            return run_job(job_id)


for _kind in KINDS.values():
    _register(_kind.task)

_mover: Mover | None = None


@signals.worker_ready.connect
def _start_mover(**_: Any) -> None:
    """Every worker drains the schedule, so retries run as long as any worker does."""
    global _mover
    _mover = Mover(worker_redis(), keys().schedule, get_settings().scheduler_interval_seconds)
    _mover.start()


@signals.worker_shutdown.connect
def _stop_mover(**_: Any) -> None:
    if _mover is not None:
        _mover.stop()


@signals.worker_shutdown.connect  # after the pool has stopped: no task uses them any more
@signals.worker_process_shutdown.connect  # a prefork child
def _close_clients(**_: Any) -> None:
    close_clients()
