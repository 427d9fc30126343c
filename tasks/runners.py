"""The job kinds, worker half: how each kind runs, given its validated input and the job context.

Only workers import this (it brings the SMTP, LLM and file clients); the request half, which the
API reads, is core/kinds.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from email.utils import parseaddr
from typing import Any

from core.tracing import client_call
from handlers.echo import EchoInput, echo
from handlers.email import send_email
from handlers.email_models import EmailJob, EmailResult
from handlers.files.job import run_file_job
from handlers.files.models import FileJob, FileResult
from handlers.llm import LlmJob, LlmResult, call_llm
from tasks.clients import get_clients
from tasks.context import JobContext


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
    return client_call("llm.call", lambda h: call_llm(job, clients.llm, clients.llm_http, h))


def _file(job: FileJob, ctx: JobContext) -> FileResult:
    clients = get_clients()
    return run_file_job(
        job,
        clients.files,
        progress=ctx.progress,
        fetch=clients.fetch_to_file,
        max_fetch_bytes=clients.settings.max_fetch_bytes,
    )


# returns the result (a pydantic model or JSON-able value) or a coroutine producing it
Runner = Callable[[Any, JobContext], Any]

RUNNERS: dict[str, Runner] = {"echo": _echo, "email": _email, "llm": _llm, "file": _file}
