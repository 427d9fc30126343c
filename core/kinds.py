"""The job kinds, request half: each kind's name, Celery task (and so its queue), input schema,
retry policy and an example request. The API, beat and the webhook sources loader read this; only
workers import the runners (tasks/runners.py), which bring the heavy clients (SMTP, LLM, image
libraries). The input schemas come from light modules (pydantic only), so importing this loads
none of those.

Adding a kind is one entry here, one runner in tasks/runners.py, one route in tasks/queues.py and
a handler in handlers/.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    # a realistic input, shown in the OpenAPI document (/docs fills it in); tests validate it
    example: Mapping[str, Any] = field(default_factory=dict)


KINDS: dict[str, Kind] = {
    "echo": Kind(
        "echo",
        "jobs.echo",
        EchoInput,
        RetryPolicy(max_attempts=3, base_seconds=0.5),
        example={"message": {"order": 42, "note": "hello"}, "sleep_ms": 100},
    ),
    # SMTP 4xx is mostly greylisting (receivers want a few minutes) or a relay restarting:
    # seconds-apart retries would all hit the same wall. Spread over ~1.5 h, like an MTA's queue.
    "email": Kind(
        "email",
        "jobs.email",
        EmailJob,
        RetryPolicy(max_attempts=6, schedule=(30.0, 120.0, 600.0, 1200.0, 3600.0)),
        example={
            "to": ["Ada Lovelace <ada@example.com>"],
            "subject": "Your weekly report",
            "text": "Hello Ada,\n\nthis week's report is attached.",
            "attachments": [
                {
                    "filename": "report.csv",
                    "content_type": "text/csv",
                    "content_base64": "ZGF5LHZpc2l0cwptb24sNDIK",
                }
            ],
        },
    ),
    # Providers answer 429/5xx in bursts that clear within a minute or two, and usually say when
    # (Retry-After wins over the curve). 5 s doubling to 5 min: 6 attempts span ~2.5 min + waits.
    "llm": Kind(
        "llm",
        "jobs.llm",
        LlmJob,
        RetryPolicy(max_attempts=6, base_seconds=5.0, max_seconds=300.0),
        example={
            "messages": [
                {"role": "system", "content": "You summarise incident notes in one sentence."},
                {"role": "user", "content": "Deploy 1412 rolled back after 5xx rose to 3 %."},
            ],
            "temperature": 0.2,
            "max_tokens": 200,
        },
    ),
    # Operations are deterministic (their failures are permanent); only a URL source's fetch can
    # fail transiently, and a file job is expensive to repeat: few attempts, a minute or two apart.
    "file": Kind(
        "file",
        "jobs.file",
        FileJob,
        RetryPolicy(max_attempts=3, base_seconds=30.0, max_seconds=300.0),
        example={
            "source": {"url": "https://example.com/photos/beach.jpg"},
            "operations": [
                {"name": "sha256"},
                {"name": "thumbnail", "params": {"width": 320, "height": 240, "format": "webp"}},
            ],
        },
    ),
}
