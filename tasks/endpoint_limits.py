"""Endpoint limits: the gate every delivery passes; what an attempt's outcome does to its endpoint.

The gate (one Lua script, one round trip, on the server's clock) replaces the delivery claim. A
delivery without ``endpoint_id`` is claimed exactly as tasks/claims.py claims one, after one HGET:
that is all the common path pays. A delivery for an endpoint goes (and is claimed) only when

- the endpoint is not disabled: otherwise the delivery is *held* in the endpoint's ``held`` zset
  (not sent, not dead-lettered) until ``release_held`` sends it, when the operator enables it;
- it is not already in flight (a re-delivered message waits for the first attempt's lease);
- for an ordered endpoint, it is the head of the endpoint's ``sequence`` (acceptance order);
- fewer than ``max_in_flight`` attempts hold a lease in the ``inflight`` zset (a lease ends when
  the attempt does, or LEASE_MARGIN past the outbound timeout, so a killed worker leaks no slot);
- ``rate_limit`` allows it: GCRA with a burst of at most the rate (never more than rate + burst in
  any second); one that must wait is given its own slot after the last handed out, so a backlog
  comes back once each, spaced at the rate, not all at once;
- a paused endpoint's probe is due (one per ENDPOINT_PROBE_INTERVAL_SECONDS); the others wait
  for the next probe time, parked, and a successful probe resumes them in the order they parked.

A delivery that must wait is not slept on: it goes back into the schedule with the time it may
go, unclaimed (no attempt counted), and its worker slot is free at once. The outcome script
(run in the attempt's final transaction) frees the lease, keeps the failure streak, pauses the
endpoint after ENDPOINT_PAUSE_AFTER_FAILURES failures in a row, and disables it on a 410 Gone or
after ENDPOINT_DISABLE_AFTER_SECONDS of continuous failure, writing the ``endpoint.disabled``
event's deliveries in the same script (logged on one line and counted in ``Keys.counters``).
Keys are computed in the scripts from the endpoint id (fine on one Redis; a Redis Cluster would
need hash tags), named in tasks/keys.py ``endpoint_limit``. One piece on purpose (~350 lines,
half of it Lua): the gate and the outcome read and write the same per-endpoint state, and each
only makes sense beside the other.

For the API's enable route: set the endpoint's ``status`` to enabled, ``disabled_reason``,
``failing_since`` and ``failure_streak`` to "" / 0 (else its next failure disables it again at
once), then ``await release_held(redis, keys, endpoint_id)`` (async, on the API's redis.asyncio
client): every delivery held while it was disabled is queued, oldest first, each once. Deliveries
parked by a pause need nothing: they come back by the next probe time at the latest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from core.statuses import DELIVERY_FINAL, DeliveryStatus, EndpointStatus
from tasks.claims import Script, lua_is_any
from tasks.deliveries import DELIVER_TASK
from tasks.endpoints import Endpoint, parse
from tasks.keys import Keys
from tasks.pipelined import Commands, PipelinedRedis
from tasks.protocol import task_message
from tasks.queues import CALLBACKS
from tasks.store import decode

log = logging.getLogger(__name__)

# An attempt lasts at most the outbound timeout (connect, send, read); the lease outlives it by
# this much before another attempt may take the slot of one whose worker died.
LEASE_MARGIN_SECONDS = 30.0

_E, _D = EndpointStatus, DeliveryStatus

_GATE = Script(f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or {lua_is_any("status", DELIVERY_FINAL)} then return false end
local function claim()
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'status', '{_D.DELIVERING}')
  return redis.call('HGETALL', KEYS[1])
end
local ep = redis.call('HGET', KEYS[1], 'endpoint_id')
if not ep or ep == '' then return {{'go', claim(), {{}}}} end
local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end
local base = ARGV[1] .. ep
local fields = redis.call('HGETALL', base)
if #fields == 0 then return {{'orphan', claim(), {{}}}} end
local e = {{}}
for i = 1, #fields, 2 do e[fields[i]] = fields[i + 1] end
local id = ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if e['status'] == '{_E.DISABLED}' then
  redis.call('ZADD', base .. ':held', 'NX', string.format('%.6f', now), id)
  return {{'held'}}
end
local probe = base .. ':probe'
if e['status'] == '{_E.PAUSED}' then
  local left = redis.call('PTTL', probe)
  if left > 0 then return {{'wait', string.format('%.6f', now + left / 1000), 'paused', ep}} end
end
local inflight = base .. ':inflight'
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
local later = string.format('%.6f', now + num(ARGV[4], 1))
if redis.call('ZSCORE', inflight, id) then return {{'wait', later, 'in_flight', ep}} end
if e['ordered'] == '1' then
  -- a head that is gone (expired) or final without leaving the line would block it for good
  local sequence = base .. ':sequence'
  while true do
    local head = redis.call('ZRANGE', sequence, 0, 0)[1]
    if not head or head == id then break end
    local hs = redis.call('HGET', ARGV[6] .. head, 'status')
    if hs and not ({lua_is_any("hs", DELIVERY_FINAL)}) then
      return {{'wait', later, 'ordered', ep}}
    end
    redis.call('ZREM', sequence, head)
  end
end
if redis.call('ZCARD', inflight) >= num(e['max_in_flight'], 32) then
  return {{'wait', later, 'busy', ep}}
end
local rate = num(e['rate_limit'], 0)
local tat = nil
if rate > 0 then
  local interval = 1 / rate
  local tau = (math.max(1, math.floor(rate)) - 1) * interval
  tat = math.max(num(redis.call('GET', base .. ':rate'), now), now)
  if tat - now > tau + 0.000001 then
    local slot = tat - tau
    local slots = base .. ':slots'
    local last = tonumber(redis.call('GET', slots))
    if last and last + interval > slot then slot = last + interval end
    local at = string.format('%.6f', slot)
    redis.call('SET', slots, at, 'PX', math.ceil((slot - now) * 1000) + 1000)
    return {{'wait', at, 'rate', ep}}
  end
  tat = tat + interval
end
if e['status'] == '{_E.PAUSED}' then
  if not redis.call('SET', probe, id, 'NX', 'PX', ARGV[5]) then
    local left = math.max(redis.call('PTTL', probe), 0)
    return {{'wait', string.format('%.6f', now + left / 1000), 'paused', ep}}
  end
end
if tat then
  local ms = math.ceil((tat - now) * 1000) + 1000
  redis.call('SET', base .. ':rate', string.format('%.6f', tat), 'PX', ms)
end
redis.call('ZADD', inflight, string.format('%.6f', now + num(ARGV[3], 60)), id)
redis.call('PEXPIRE', inflight, math.ceil(num(ARGV[3], 60) * 1000))
redis.call('HDEL', base .. ':parked', id)
redis.call('ZREM', base .. ':parked_order', id)
return {{'go', claim(), fields}}
""")

_OUTCOME = Script(f"""
local base, id = ARGV[1], ARGV[2]
redis.call('ZREM', base .. ':inflight', id)
if ARGV[4] == '1' then redis.call('ZREM', base .. ':sequence', id) end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if ARGV[3] == 'ok' then
  redis.call('HSET', KEYS[1], 'failure_streak', 0, 'failing_since', '', 'last_success_at', ARGV[5])
  if status ~= '{_E.PAUSED}' then return status end
  redis.call('HSET', KEYS[1], 'status', '{_E.ENABLED}', 'updated_at', ARGV[5])
  redis.call('DEL', base .. ':probe')
  local parked = redis.call('ZRANGE', base .. ':parked_order', 0, -1)
  for i, d in ipairs(parked) do
    local member = redis.call('HGET', base .. ':parked', d)
    if member then
      redis.call('ZADD', ARGV[10], 'XX', string.format('%.6f', now + i / 1000000), member)
    end
  end
  redis.call('DEL', base .. ':parked', base .. ':parked_order')
  return 'resumed'
end
local streak = redis.call('HINCRBY', KEYS[1], 'failure_streak', 1)
local since = tonumber(redis.call('HGET', KEYS[1], 'failing_since'))
if not since then
  since = now
  redis.call('HSET', KEYS[1], 'failing_since', string.format('%.3f', now))
end
redis.call('HSET', KEYS[1], 'last_failure_at', ARGV[5])
if status == '{_E.DISABLED}' then return status end
local due = ARGV[3] == 'gone' or now - since >= tonumber(ARGV[7])
if due and ARGV[12] ~= '' then
  redis.call('HSET', KEYS[1], 'status', '{_E.DISABLED}', 'disabled_reason', ARGV[8],
    'updated_at', ARGV[5])
  redis.call('DEL', base .. ':probe')
  redis.call('HINCRBY', ARGV[11], 'endpoint.disabled', 1)
  for _, command in ipairs(cjson.decode(ARGV[12])) do redis.call(unpack(command)) end
  return '{_E.DISABLED}'
end
if status == '{_E.ENABLED}' and streak >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'status', '{_E.PAUSED}', 'updated_at', ARGV[5])
  redis.call('SET', base .. ':probe', id, 'PX', ARGV[9])
  return '{_E.PAUSED}'
end
return status
""")

_RELEASE = Script("""
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
""")


@dataclass(frozen=True)
class Gate:
    """What the gate said: go (with the claimed record), wait until ``due``, held, or orphan."""

    verdict: str
    record: dict[str, Any] | None = None
    endpoint: Endpoint | None = None
    fields: dict[str, str] | None = None
    due: float = 0.0
    reason: str = ""
    endpoint_id: str = ""


def _pairs(raw: list[Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in zip(raw[::2], raw[1::2], strict=True)}


async def gate(
    conn: PipelinedRedis,
    keys: Keys,
    delivery_id: str,
    *,
    lease: float,
    wait: float,
    probe_interval: float,
) -> Gate | None:
    """Claim delivery ``delivery_id`` if it may go now; None when it is unknown or final."""
    probe_ms = max(1, int(probe_interval * 1000))
    args = [keys.endpoint(""), delivery_id, lease, wait, probe_ms, keys.delivery("")]
    raw = await conn.eval_script(_GATE.text, _GATE.sha, [keys.delivery(delivery_id)], args)
    if not raw:
        return None
    verdict = raw[0].decode()
    if verdict == "go" or verdict == "orphan":
        record = decode(dict(zip(raw[1][::2], raw[1][1::2], strict=True)))
        if not raw[2]:
            return Gate(verdict, record)
        fields = _pairs(raw[2])
        return Gate(verdict, record, parse(fields), fields)
    if verdict == "wait":
        return Gate(verdict, due=float(raw[1]), reason=raw[2].decode(), endpoint_id=raw[3].decode())
    return Gate(verdict)


def defer(writes: Commands, keys: Keys, delivery_id: str, g: Gate) -> None:
    """Queue the writes that put a waiting delivery back in the schedule, due when it may go."""
    endpoint_id = g.endpoint_id
    message = task_message(DELIVER_TASK, delivery_id, CALLBACKS, [delivery_id])
    member = f"{CALLBACKS}\n{message}"
    writes.zadd(keys.schedule, {member: g.due})
    if g.reason == "paused":
        # the latest schedule entry of each parked delivery, and the order they first parked in
        writes.hset(keys.endpoint_limit(endpoint_id, "parked"), mapping={delivery_id: member})
        order = keys.endpoint_limit(endpoint_id, "parked_order")
        writes.items.append(("ZADD", order, "NX", time.time(), delivery_id))


def outcome(
    writes: Commands,
    keys: Keys,
    endpoint_id: str,
    delivery_id: str,
    *,
    result: str,
    final: bool,
    now_iso: str,
    pause_after: int,
    disable_after: float,
    reason: str,
    probe_interval: float,
    disabled_event: Commands | None,
) -> None:
    """Queue the outcome script: ``result`` is ok, fail or gone (a 410)."""
    commands = ""
    if disabled_event is not None:
        commands = json.dumps([[_text(part) for part in item] for item in disabled_event.items])
    args = [
        keys.endpoint(endpoint_id),
        delivery_id,
        result,
        "1" if final else "0",
        now_iso,
        pause_after,
        disable_after,
        reason,
        max(1, int(probe_interval * 1000)),
        keys.schedule,
        keys.counters,
        commands,
    ]
    # EVAL, not EVALSHA: inside MULTI a missing script would fail after the other writes ran
    writes.items.append(("EVAL", _OUTCOME.text, 1, keys.endpoint(endpoint_id), *args))


def _text(part: Any) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


def may_disable(fields: dict[str, str], result: str, disable_after: float) -> bool:
    """Whether this failed attempt may disable the endpoint (then its event is prepared)."""
    if result == "gone":
        return True
    since = float(fields.get("failing_since") or time.time())
    return result == "fail" and time.time() - since >= disable_after


def disable_reason(url: str, fields: dict[str, str], result: str) -> str:
    """Why the endpoint is being disabled, as its record and the event say it."""
    if result == "gone":
        return f"410 Gone from {urlsplit(url).hostname}"
    since = float(fields.get("failing_since") or time.time())
    return f"failing continuously since {datetime.fromtimestamp(since, UTC).isoformat()}"


async def release_held(client: Redis, keys: Keys, endpoint_id: str) -> int:
    """Queue every delivery held while ``endpoint_id`` was disabled, oldest first; how many.

    Async, on a redis.asyncio client (the API's). Call it after setting the endpoint enabled: a
    delivery the gate holds between the two is released by the next call. Each id is taken out of
    the held set and queued in one script, so two releases never send one twice.
    """
    held = keys.endpoint_limit(endpoint_id, "held")
    raw: list[Any] = await client.zrange(held, 0, -1)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw]
    args: list[str] = []
    for delivery_id in ids:
        args += [delivery_id, task_message(DELIVER_TASK, delivery_id, CALLBACKS, [delivery_id])]
    if not args:
        return 0
    released = await client.eval(_RELEASE.text, 2, held, CALLBACKS, *args)
    return int(released)


def log_disabled(endpoint_id: str, reason: str) -> None:
    """The one log line of an ``endpoint.disabled`` event."""
    log.warning("endpoint.disabled endpoint=%s reason=%s", endpoint_id, reason)
