"""The job kinds, request half: each kind's name, Celery task (and so its queue), input schema and
retry policy. The API, beat and the webhook sources loader read this; only workers import the
runners (tasks/runners.py), which bring the heavy clients (SMTP, LLM, image libraries). The input
schemas come from light modules (pydantic only), so importing this loads none of those.

Adding a kind is one entry here, one runner in tasks/runners.py, one route in tasks/queues.py and
a handler in handlers/.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from core.retry import RetryPolicy
from handlers.echo import EchoInput
from handlers.email_models import EmailJob
from handlers.files.models import FileJob
from handlers.llm import LlmJob


@dataclass(frozen=True)
class Kind:
    """One kind of job, as a caller submits it."""

    name: str
    task: str
    input: type[BaseModel]
    retry: RetryPolicy | None = None  # None: the default policy from settings


KINDS: dict[str, Kind] = {
    "echo": Kind("echo", "jobs.echo", EchoInput, RetryPolicy(max_attempts=3, base_seconds=0.5)),
    # SMTP 4xx is mostly greylisting (receivers want a few minutes) or a relay restarting:
    # seconds-apart retries would all hit the same wall. Spread over ~1.5 h, like an MTA's queue.
    "email": Kind(
        "email",
        "jobs.email",
        EmailJob,
        RetryPolicy(max_attempts=6, schedule=(30.0, 120.0, 600.0, 1200.0, 3600.0)),
    ),
    # Providers answer 429/5xx in bursts that clear within a minute or two, and usually say when
    # (Retry-After wins over the curve). 5 s doubling to 5 min: 6 attempts span ~2.5 min + waits.
    "llm": Kind(
        "llm", "jobs.llm", LlmJob, RetryPolicy(max_attempts=6, base_seconds=5.0, max_seconds=300.0)
    ),
    # Operations are deterministic (their failures are permanent); only a URL source's fetch can
    # fail transiently, and a file job is expensive to repeat: few attempts, a minute or two apart.
    "file": Kind(
        "file",
        "jobs.file",
        FileJob,
        RetryPolicy(max_attempts=3, base_seconds=30.0, max_seconds=300.0),
    ),
}
