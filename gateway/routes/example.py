"""The original example, kept exactly: GET /add/{a}/{b} and GET /result/{task_id}, no key needed."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter

from gateway.deps import RedisDep
from tasks.protocol import task_message
from tasks.queues import queue_for

router = APIRouter(tags=["example"])

# Celery's Redis result backend key for a task (celery/backends/base.py, KeyValueStoreBackend).
RESULT_KEY = "celery-task-meta-{}"


@router.get("/add/{a}/{b}")
async def add(a: int, b: int, redis: RedisDep) -> dict[str, str]:
    """Queue a + b on the default queue; returns the task id."""
    task_id = str(uuid.uuid4())
    queue = queue_for("tasks.add")
    await redis.lpush(queue, task_message("tasks.add", task_id, queue, [a, b], ignore_result=False))
    return {"task_id": task_id}


@router.get("/result/{task_id}")
async def result(task_id: str, redis: RedisDep) -> dict[str, Any]:
    """'pending' until the worker has stored the result, then the result."""
    raw = await redis.get(RESULT_KEY.format(task_id))
    meta = json.loads(raw) if raw else {}
    state = meta.get("status")
    if state == "SUCCESS":
        return {"task_id": task_id, "status": "completed", "result": meta.get("result")}
    if state == "FAILURE":
        error = meta.get("result") or {}
        return {
            "task_id": task_id,
            "status": "failed",
            "error": str(error.get("exc_message", error)),
        }
    return {"task_id": task_id, "status": "pending"}
