"""The original example's task, unchanged in behaviour: add two numbers, keep the Celery result."""

from __future__ import annotations

from tasks.app import app


@app.task(name="tasks.add", ignore_result=False)
def add(a: int, b: int) -> int:
    """a + b."""
    return a + b
