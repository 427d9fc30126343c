"""The job kinds: for each, its input model, its Celery task (and so its queue) and its handler.

Adding a kind is one entry here, one route in queues.py, and a handler in handlers/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from handlers.echo import EchoInput, echo
from tasks.context import JobContext
from tasks.retry import RetryPolicy


@dataclass(frozen=True)
class Kind:
    """One kind of job."""

    name: str
    task: str
    input: type[BaseModel]
    # returns the result (a pydantic model or JSON-able value) or a coroutine producing it
    run: Callable[[Any, JobContext], Any]
    retry: RetryPolicy | None = None  # None: the default policy from settings


def _echo(job: EchoInput, ctx: JobContext) -> dict[str, Any]:
    return echo(job, ctx.attempt)


KINDS: dict[str, Kind] = {
    "echo": Kind(
        "echo", "jobs.echo", EchoInput, _echo, RetryPolicy(max_attempts=3, base_seconds=0.5)
    ),
}
