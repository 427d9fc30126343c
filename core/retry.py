"""The one retry policy: exponential backoff with jitter, or a fixed schedule, per kind."""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.settings import get_settings


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


def default_policy() -> RetryPolicy:
    """The retry policy of kinds that don't name their own."""
    s = get_settings()
    return RetryPolicy(s.max_attempts, s.retry_base_seconds, s.retry_max_seconds, s.retry_jitter)


def policy_for(name: str, base: RetryPolicy | None) -> RetryPolicy:
    """The retry policy of ``name`` (a kind, or "callbacks"), with RETRY_POLICIES applied."""
    policy = base or default_policy()
    override = get_settings().retry_policies.get(name)
    if not override:
        return policy
    values = {**policy.__dict__, **override}
    if values.get("schedule") is not None:
        values["schedule"] = tuple(float(step) for step in values["schedule"])
    return RetryPolicy(**values)
