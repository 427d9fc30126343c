"""The two baselines bench_ingest.py measures the gateway against, as uvicorn app factories.

- ``bare_app``: a FastAPI endpoint that parses and validates the same JSON body (FastAPI's own
  body handling: json.loads + the echo kind's pydantic model) and answers 202, enqueueing nothing.
- ``naive_app``: the original example's design, a *sync* endpoint calling Celery's ``.delay()``
  (a real Celery app on the same Redis: broker and result backend redis, JSON serializer), so
  every request takes a threadpool hop and a blocking publish.

Both answer on any POST path, so the same request (path, headers, body) goes to all three servers
and to a future webhook endpoint alike. Redis comes from BENCH_REDIS_URL.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from handlers.echo import EchoInput


class Accepted(BaseModel):
    status: str


def bare_app() -> FastAPI:
    """Parse + validate the body, 202, nothing else."""
    app = FastAPI(title="bench: bare")

    @app.post("/{path:path}", status_code=202)
    async def ingest(path: str, body: EchoInput) -> Accepted:
        return Accepted(status="accepted")

    return app


def naive_app() -> FastAPI:
    """The 'before' design: sync def + task.delay() on a Celery app with Redis broker/backend."""
    from celery import Celery

    url = os.environ["BENCH_REDIS_URL"]
    celery = Celery("bench_naive", broker=url, backend=url)
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )

    @celery.task(name="bench.naive_echo")
    def naive_echo(payload: dict[str, Any]) -> dict[str, Any]:
        return payload  # never runs: no worker consumes during the benchmark

    app = FastAPI(title="bench: naive")

    @app.post("/{path:path}", status_code=202)
    def submit(path: str, body: EchoInput) -> dict[str, str]:
        result = naive_echo.delay(body.model_dump())
        return {"task_id": result.id}

    return app
