"""What a running job may know about itself, handed to the kind's adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class JobContext:
    """The job's id, which attempt this is, and a way to report progress (0..100)."""

    job_id: str
    attempt: int
    progress: Callable[[int], None]
