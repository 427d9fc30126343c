"""The failure tree every handler raises from; the task layer maps it to the retry policy.

HandlerError                 base: a job could not do its work
├── TransientError           may succeed later: network errors, timeouts, 429, 5xx, SMTP 4xx
│                            (retried with backoff; ``retry_after`` overrides the next delay)
└── PermanentError           will fail the same way again: 400/401/404, SMTP 5xx, bad input
                             (the job fails at once, no retry)
"""

from __future__ import annotations


class HandlerError(Exception):
    """A job's handler could not finish its work."""

    code = "handler_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class TransientError(HandlerError):
    """The work may succeed if tried again later."""

    code = "transient_error"

    def __init__(
        self, detail: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class PermanentError(HandlerError):
    """The work will fail the same way again; do not retry."""

    code = "permanent_error"
