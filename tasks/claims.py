"""The claim: the one Lua script shape that starts an attempt at a job, a delivery or an event.

A claim reads the record's status. A record that is gone or final answers nil, and the message is
dropped: a re-delivered message never runs finished work again. Otherwise the claim counts the
attempt, sets the in-progress status (with the start time, and clearing what the last attempt
left, where the record keeps them), renews the record's time to live where it has one, and answers
the whole record. One round trip and atomic, so two copies of one message cannot both start.

The scripts are generated from core/statuses.py, so a status made final there is final here too;
each text and its SHA are built once, at import. ``claim`` goes through the process loop's
pipelined connection (EVALSHA, loading the script when Redis does not know it); ``claim_sync`` is
for blocking callers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from core.statuses import (
    DELIVERY_FINAL,
    EVENT_FINAL,
    JOB_FINAL,
    DeliveryStatus,
    EventStatus,
    JobStatus,
)
from tasks.job_index import lua_move
from tasks.pipelined import PipelinedRedis

_WORD = re.compile(r"[a-z_]+")


@dataclass(frozen=True)
class Script:
    """A Lua script's text and its SHA-1 (Redis's id for EVALSHA), hashed once."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.text.encode()).hexdigest()  # noqa: S324 (Redis's script id)
        object.__setattr__(self, "sha", sha)


def lua_string(word: str) -> str:
    """``word`` (a status or field name) as a Lua string literal; anything else is refused."""
    if not _WORD.fullmatch(word):
        raise ValueError(f"not a plain word for a Lua literal: {word!r}")
    return f"'{word}'"


def lua_is_any(variable: str, words: Iterable[str]) -> str:
    """A Lua condition that ``variable`` is one of ``words``: ``s == 'a' or s == 'b'``."""
    # sorted: the same text (and SHA) in every process, whatever the set's iteration order
    return " or ".join(f"{variable} == {lua_string(word)}" for word in sorted(words))


def claim_script(
    final: frozenset[str],
    running: str,
    *,
    started_at: bool,
    ttl: bool,
    clear: tuple[str, ...] = (),
    publish: bool = False,
    index: bool = False,
) -> Script:
    """The claim for records whose final statuses are ``final``, in progress as ``running``.

    KEYS[1] is the record's hash; ARGV holds the start time (if ``started_at``), then the time to
    live (if ``ttl``). ``clear``: fields the last attempt left that a new one empties. With
    ``publish``, KEYS[2] is the record's change channel and hears ``running`` (tasks/changes.py).
    With ``index``, KEYS[3] is the all-jobs index and ARGV ends with ``Keys.jobs_by_prefix`` and
    the job's id: the job moves to ``running``'s index set (tasks/job_index.py).
    """

    argv = 0
    fields = ["'status'", lua_string(running)]
    if started_at:
        argv += 1
        fields += ["'started_at'", f"ARGV[{argv}]"]
    for name in clear:
        fields += [lua_string(name), "''"]
    lines = [
        "local status = redis.call('HGET', KEYS[1], 'status')",
        f"if not status or {lua_is_any('status', final)} then return false end",
    ]
    ttl_arg = argv + 1
    if index:
        first = ttl_arg + 1 if ttl else ttl_arg
        prefix, job_id = f"ARGV[{first}]", f"ARGV[{first + 1}]"
        lines += lua_move("KEYS[1]", "KEYS[3]", prefix, job_id, lua_string(running)).splitlines()
    lines += [
        "redis.call('HINCRBY', KEYS[1], 'attempts', 1)",
        f"redis.call('HSET', KEYS[1], {', '.join(fields)})",
    ]
    if ttl:
        lines.append(f"redis.call('EXPIRE', KEYS[1], ARGV[{ttl_arg}])")
    if publish:
        lines.append(f"redis.call('PUBLISH', KEYS[2], {lua_string(running)})")
    lines.append("return redis.call('HGETALL', KEYS[1])")
    return Script("\n".join(lines) + "\n")


# KEYS: the job, its change channel, the all-jobs index. ARGV: start time, ttl, the index sets'
# prefix, the job's id. The last attempt's error goes: a running job shows none.
JOB_CLAIM = claim_script(
    JOB_FINAL,
    JobStatus.RUNNING,
    started_at=True,
    ttl=True,
    clear=("error",),
    publish=True,
    index=True,
)
# No ARGV: a delivery's attempts carry their own times, and its ttl is renewed when one ends.
DELIVERY_CLAIM = claim_script(
    DELIVERY_FINAL, DeliveryStatus.DELIVERING, started_at=False, ttl=False
)
# ARGV: start time, ttl.
EVENT_CLAIM = claim_script(EVENT_FINAL, EventStatus.PROCESSING, started_at=True, ttl=True)


async def claim(
    conn: PipelinedRedis,
    script: Script,
    key: str,
    *args: Any,
    channel: str | None = None,
    index: str | None = None,
) -> dict[Any, Any] | None:
    """Run claim ``script`` on record ``key``: its raw fields, or None when it is gone or final.
    ``channel``: the record's change channel, for a script made with ``publish``; ``index``: the
    all-jobs index, for one made with ``index``."""
    script_keys = [key, *([channel] if channel else []), *([index] if index else [])]
    return _fields(await conn.eval_script(script.text, script.sha, script_keys, list(args)))


def claim_sync(
    client: redis.Redis,
    script: Script,
    key: str,
    *args: Any,
    channel: str | None = None,
    index: str | None = None,
) -> dict[Any, Any] | None:
    """``claim`` for a blocking redis-py client."""
    script_keys = [key, *([channel] if channel else []), *([index] if index else [])]
    return _fields(client.eval(script.text, len(script_keys), *script_keys, *args))


def _fields(raw: Any) -> dict[Any, Any] | None:
    if not raw:
        return None
    return dict(zip(raw[::2], raw[1::2], strict=True))
