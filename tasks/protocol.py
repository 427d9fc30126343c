"""Celery task messages (protocol v2, JSON) as the kombu Redis transport stores them.

The gateway writes these itself with redis.asyncio instead of calling ``apply_async``: the publish
then joins the job record in one atomic round trip and never blocks the event loop. The format is
kombu's virtual-transport envelope (see ``kombu/transport/virtual/base.py``, ``prepare_message`` and
``_inplace_augment_message``) around Celery's ``as_task_v2`` headers and body; a test feeds these
messages to a real worker. Celery's and kombu's majors are pinned (pyproject.toml) and
tests/tasks/test_contracts.py compares these messages, field by field, with ``send_task``'s.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
from functools import lru_cache
from typing import Any

import orjson

_ORIGIN = f"gateway-{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def dumps(value: Any) -> str:
    """Compact JSON (UTF-8, not ASCII-escaped), the one serializer on every queue and record."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. an integer beyond 64 bits, which orjson refuses
        return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def new_id() -> str:
    """A random UUID4-shaped id: unique, not secret (every lookup by id also checks the caller).

    From the process's PRNG (reseeded from os.urandom at start and after every fork) rather than a
    getrandom syscall per id: ids are minted twice per request on the hot path.
    """
    bits = (_random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)
# version 4 in bits 76-79, RFC 4122 variant in bits 62-63
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


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
    headers: dict[str, Any] = {
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
        # written by Celery >= 5.3's send_task too (task replacement depth, canvas stamping)
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
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
            "delivery_tag": new_id(),
        },
    }
    return dumps(envelope)


_ID, _TAG, _BODY = "@@job-id@@", "@@tag@@", "@@body@@"


@lru_cache(maxsize=128)
def _job_template(task: str, queue: str, retries: int) -> tuple[str, str, str]:
    """The job message with placeholders, and the body's JSON around the id (hot path: the API)."""
    envelope = json.loads(task_message(task, _ID, queue, [_ID], retries=retries))
    envelope["body"] = _BODY
    envelope["properties"]["delivery_tag"] = _TAG
    before, _, after = dumps([[_ID], {}, _EMBED]).partition(_ID)
    return dumps(envelope), before, after


def job_message(task: str, job_id: str, queue: str, retries: int = 0) -> str:
    """The message that runs ``task`` with one id (a job's, an event's) as its only argument."""
    template, before, after = _job_template(task, queue, retries)
    body = base64.b64encode(f"{before}{job_id}{after}".encode()).decode()
    return template.replace(_ID, job_id).replace(_TAG, new_id()).replace(_BODY, body)
