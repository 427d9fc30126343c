"""Celery task messages (protocol v2, JSON) as the kombu Redis transport stores them.

The gateway writes these itself with redis.asyncio instead of calling ``apply_async``: the publish
then joins the job record in one atomic round trip and never blocks the event loop. The format is
kombu's virtual-transport envelope (see ``kombu/transport/virtual/base.py``, ``prepare_message`` and
``_inplace_augment_message``) around Celery's ``as_task_v2`` headers and body; a test feeds these
messages to a real worker.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

_ORIGIN = f"gateway-{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def dumps(value: Any) -> str:
    """Compact JSON, the one serializer on every queue."""
    return json.dumps(value, separators=(",", ":"), default=str)


def task_message(
    task: str,
    task_id: str,
    queue: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    retries: int = 0,
    ignore_result: bool = True,
) -> str:
    """One message for ``queue``'s Redis list, ready to LPUSH."""
    kwargs = kwargs or {}
    body = dumps([list(args), kwargs, _EMBED]).encode()
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(tuple(args)),
        "kwargsrepr": repr(kwargs),
        "origin": _ORIGIN,
        "ignore_result": ignore_result,
    }
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            # kombu tracks unacked messages by this tag; it must be unique per message
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return dumps(envelope)


def job_message(task: str, job_id: str, queue: str, retries: int = 0) -> str:
    """The message that runs job ``job_id`` with ``task``: its only argument is the job id."""
    return task_message(task, job_id, queue, [job_id], retries=retries)
