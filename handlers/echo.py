"""The built-in `echo` kind: returns its input. Tests and benchmarks drive the job path with it."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from handlers.errors import PermanentError, TransientError


class EchoInput(BaseModel):
    """What an echo job carries, and how it should misbehave when a test asks it to."""

    message: Any = None
    sleep_ms: int = Field(0, ge=0, le=60_000, description="work time to simulate")
    fail_attempts: int = Field(0, ge=0, le=100, description="fail transiently on attempts <= this")
    fail_permanently: bool = False


def echo(job: EchoInput, attempt: int) -> dict[str, Any]:
    """Return the message, after the requested simulated work or failure."""
    if job.sleep_ms:
        time.sleep(job.sleep_ms / 1000)
    if job.fail_permanently:
        raise PermanentError("echo was asked to fail", code="echo_failed")
    if attempt <= job.fail_attempts:
        raise TransientError(f"echo was asked to fail attempt {attempt}", code="echo_retry")
    return {"message": job.message, "attempt": attempt}
