"""The queues, one per type of work, and the one place that routes task names to them."""

from __future__ import annotations

from typing import Final

DEFAULT: Final = "default"
WEBHOOKS: Final = "webhooks"
EMAIL: Final = "email"
LLM: Final = "llm"
FILES: Final = "files"
CALLBACKS: Final = "callbacks"

QUEUES: Final = (DEFAULT, WEBHOOKS, EMAIL, LLM, FILES, CALLBACKS)

# task name -> queue. Celery reads this as task_routes; the gateway's publisher reads it too.
ROUTES: Final[dict[str, str]] = {
    "tasks.add": DEFAULT,
    "jobs.echo": DEFAULT,
    "jobs.email": EMAIL,
    "jobs.llm": LLM,
    "jobs.file": FILES,
    "webhooks.process": WEBHOOKS,
    "callbacks.deliver": CALLBACKS,
    "periodic.fire": DEFAULT,
}


def queue_for(task: str) -> str:
    """The queue a task's messages go to."""
    return ROUTES.get(task, DEFAULT)


# GIL switch interval (s) of threads- and loop-pool workers (Python's default: 0.005); see
# gateway/cli.py.
THREADS_SWITCH_INTERVAL: Final = 0.0005

# How each queue's workers run by default: (pool, concurrency). email, llm and callbacks wait on
# the network for seconds per job: the loop pool (tasks/pool.py) runs their tasks as greenlets on
# one event loop per process, a slot costing tens of KB rather than a thread. They hold 1500: with
# 1000 slots a 2 s call caps a process at 500 jobs/s however cheap the worker is, and calls that
# start together finish together, in waves the loop works through one by one (bench/README.md).
# `default` and `webhooks` run short sync tasks on threads; `files` is CPU- and disk-bound:
# prefork, one process per core, prefetch 1.
WORKER_PROFILES: Final[dict[str, tuple[str, int]]] = {
    DEFAULT: ("threads", 16),
    WEBHOOKS: ("threads", 64),
    EMAIL: ("loop", 1500),
    LLM: ("loop", 1500),
    FILES: ("prefork", 0),  # 0: one process per CPU core
    CALLBACKS: ("loop", 1500),
}
