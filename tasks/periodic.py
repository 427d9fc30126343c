"""Periodic jobs: declared in a TOML file, fired by beat, each firing a normal job.

[[periodic]]
name = "nightly-digest"
kind = "email"                 # any job kind
cron = "0 3 * * *"             # minute hour day-of-month month day-of-week (UTC)
# every = 300                  # or: seconds between firings
payload = { to = "ops@example.com", subject = "digest", text = "..." }
# callback_url = "https://example.com/hooks/digest"
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery.schedules import crontab
from pydantic import BaseModel, Field, model_validator

from core.kinds import KINDS
from core.settings import get_settings
from tasks.app import app
from tasks.submit import submit_job

FIRE_TASK = "periodic.fire"


class Periodic(BaseModel):
    """One periodic job."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    kind: str
    cron: str | None = None
    every: float | None = Field(None, gt=0)
    payload: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> Periodic:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"{self.name}: give exactly one of cron or every")
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")
        KINDS[self.kind].input.model_validate(self.payload)
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"{self.name}: cron needs 5 fields (m h dom mon dow)")
        return self

    def schedule(self) -> Any:
        """Celery's schedule object for this entry."""
        if self.every is not None:
            return timedelta(seconds=self.every)
        minute, hour, dom, month, dow = str(self.cron).split()
        return crontab(minute, hour, dow, dom, month)


def load(path: Path | None) -> dict[str, Periodic]:
    """Entries of the periodic-jobs file by name (none when no file is configured)."""
    if path is None:
        return {}
    data = tomllib.loads(path.read_text())
    entries = [Periodic.model_validate(item) for item in data.get("periodic", [])]
    return {entry.name: entry for entry in entries}


@lru_cache
def configured() -> dict[str, Periodic]:
    """This process's periodic entries."""
    return load(get_settings().periodic_jobs_file)


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Celery's beat_schedule: each entry fires FIRE_TASK with the entry's name."""
    return {
        name: {"task": FIRE_TASK, "schedule": entry.schedule(), "args": [name]}
        for name, entry in configured().items()
    }


@app.task(name=FIRE_TASK)
def fire(name: str) -> str | None:
    """Thin task: start one run of periodic entry ``name`` as a job."""
    entry = configured().get(name)
    if entry is None:
        return None
    return submit_job(entry.kind, entry.payload, owner="periodic", callback_url=entry.callback_url)
