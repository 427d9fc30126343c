"""The one retry policy: exponential backoff with jitter, or a fixed schedule, per kind."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a kind gets and how long to wait before each retry."""

    max_attempts: int = 5
    base_seconds: float = 2.0
    max_seconds: float = 3600.0
    jitter: float = 0.2
    # When set, the wait before attempt n+1 is schedule[n-1] (±jitter), not the exponential curve.
    schedule: tuple[float, ...] | None = None

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            # the receiver said when; honour it, within our ceiling, without jitter
            return max(0.0, min(float(retry_after), self.max_seconds))
        if self.schedule:
            base = self.schedule[min(attempt, len(self.schedule)) - 1]
        else:
            base = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))
