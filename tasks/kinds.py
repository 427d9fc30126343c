"""The job kinds: for each, its input model, its Celery task (and so its queue) and its handler.

Adding a kind is one entry here, one route in queues.py, and a handler in handlers/.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from pydantic import BaseModel

from handlers.echo import EchoInput, echo
from handlers.email import EmailJob, EmailResult, send_email
from handlers.files import FileJob, FileResult, run_file_job
from handlers.llm import LlmJob, LlmResult, call_llm
from tasks.clients import get_clients
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


def _email(job: EmailJob, ctx: JobContext) -> Coroutine[Any, Any, EmailResult]:
    clients = get_clients()
    sender = parseaddr(job.from_ or clients.smtp.default_from)[1]
    domain = sender.rpartition("@")[2] or "localhost"
    # From the job id, so every attempt of one job sends the same Message-ID and a receiver
    # can drop the duplicate of a send that succeeded but whose answer we never saw.
    return send_email(
        job,
        clients.smtp,
        message_id=f"<{ctx.job_id}@{domain}>",
        fetch=clients.fetch_bytes,
        pool=clients.smtp_pool,
    )


def _llm(job: LlmJob, ctx: JobContext) -> Coroutine[Any, Any, LlmResult]:
    clients = get_clients()
    return call_llm(job, clients.llm, clients.llm_http)


def _file(job: FileJob, ctx: JobContext) -> FileResult:
    clients = get_clients()
    return run_file_job(
        job,
        clients.files,
        progress=ctx.progress,
        fetch=clients.fetch_to_file,
        max_fetch_bytes=clients.settings.max_fetch_bytes,
    )


KINDS: dict[str, Kind] = {
    "echo": Kind(
        "echo", "jobs.echo", EchoInput, _echo, RetryPolicy(max_attempts=3, base_seconds=0.5)
    ),
    # SMTP 4xx is mostly greylisting (receivers want a few minutes) or a relay restarting:
    # seconds-apart retries would all hit the same wall. Spread over ~1.5 h, like an MTA's queue.
    "email": Kind(
        "email",
        "jobs.email",
        EmailJob,
        _email,
        RetryPolicy(max_attempts=6, schedule=(30.0, 120.0, 600.0, 1200.0, 3600.0)),
    ),
    # Providers answer 429/5xx in bursts that clear within a minute or two, and usually say when
    # (Retry-After wins over the curve). 5 s doubling to 5 min: 6 attempts span ~2.5 min + waits.
    "llm": Kind(
        "llm",
        "jobs.llm",
        LlmJob,
        _llm,
        RetryPolicy(max_attempts=6, base_seconds=5.0, max_seconds=300.0),
    ),
    # Operations are deterministic (their failures are permanent); only a URL source's fetch can
    # fail transiently, and a file job is expensive to repeat: few attempts, a minute or two apart.
    "file": Kind(
        "file",
        "jobs.file",
        FileJob,
        _file,
        RetryPolicy(max_attempts=3, base_seconds=30.0, max_seconds=300.0),
    ),
}
