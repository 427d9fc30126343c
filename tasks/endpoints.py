"""Endpoints: subscribers the operator registers at run time, offered every matching event.

An endpoint is one Redis hash (``Keys.endpoint``), indexed by creation time in ``Keys.endpoints``.
Its fields, all strings as Redis keeps them:

    id                  "ep_" + 32 hex digits
    url                 where deliveries go (passed the outbound guard when set)
    event_types         JSON list of globs matched against an event's type ("invoice.*", "*")
    sources             JSON list of source names ("jobs" for job outcomes); [] = every source
    description         free text
    rate_limit          deliveries per second, "" for none
    max_in_flight       requests in flight to it at most
    ordered             "1": one delivery at a time, in the order the events were accepted
    headers             JSON object of extra request headers
    status              core.statuses.EndpointStatus
    disabled_reason     why it was disabled ("" otherwise)
    secret              whsec_... that signs its deliveries
    previous_secret     the secret before the last rotation, also signing until previous_until
    previous_until      epoch seconds, "" when there is no previous secret
    failure_streak      failed attempts in a row
    failing_since       epoch seconds of the first failure of the streak, ""
    last_success_at, last_failure_at, created_at, updated_at    ISO 8601

Offering an event writes one delivery per matching enabled or paused endpoint (``endpoint_id``
on the delivery record) into the caller's transaction, on the callbacks machinery: signed with
the endpoint's secrets, retried, dead-lettered and replayable like every delivery. The same
transaction adds the delivery to the endpoint's own list (``Keys.endpoint_deliveries``, the
newest ENDPOINT_DELIVERIES_KEPT).

Every change to an endpoint (API or worker: a status change too) INCRs ``Keys.endpoints_version``
in its own transaction (``bump_version``): a worker keeps the endpoint list in memory
(``EndpointCache``) and reads only that counter per event, loading the list again when it moved.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from core.statuses import EndpointStatus
from handlers.webhooks import matches
from tasks.deliveries import add_delivery
from tasks.keys import Keys
from tasks.pipelined import Commands, PipelinedRedis

JOB_SOURCE = "jobs"  # the source name of job outcome events (job.succeeded, job.failed)
ENDPOINT_DELIVERIES_KEPT = 10_000  # per endpoint, in its list; older ones stay on their parent


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as the workers use it."""

    id: str
    url: str
    event_types: tuple[str, ...]
    sources: tuple[str, ...]
    status: EndpointStatus
    secret: str
    previous_secret: str = ""
    previous_until: float = 0.0
    rate_limit: float | None = None
    max_in_flight: int = 32
    ordered: bool = False
    headers: Mapping[str, str] | None = None

    def wants(self, event_type: str, source: str) -> bool:
        """Whether this endpoint is offered an event of ``event_type`` from ``source``."""
        if self.status == EndpointStatus.DISABLED:
            return False
        if self.sources and source not in self.sources:
            return False
        return matches(event_type, self.event_types)

    def signing_secrets(self, now: float | None = None) -> list[str]:
        """The secrets that sign its deliveries: the current one, then the previous in its grace."""
        now = time.time() if now is None else now
        if self.previous_secret and now < self.previous_until:
            return [self.secret, self.previous_secret]
        return [self.secret]


def _text(fields: Mapping[Any, Any], name: str) -> str:
    value = fields.get(name, fields.get(name.encode(), b""))
    return value.decode() if isinstance(value, bytes) else str(value)


def parse(fields: Mapping[Any, Any]) -> Endpoint:
    """An endpoint from its Redis hash (bytes or str keys and values)."""
    rate = _text(fields, "rate_limit")
    until = _text(fields, "previous_until")
    headers = _text(fields, "headers")
    return Endpoint(
        id=_text(fields, "id"),
        url=_text(fields, "url"),
        event_types=tuple(json.loads(_text(fields, "event_types") or '["*"]')),
        sources=tuple(json.loads(_text(fields, "sources") or "[]")),
        status=EndpointStatus(_text(fields, "status") or EndpointStatus.ENABLED),
        secret=_text(fields, "secret"),
        previous_secret=_text(fields, "previous_secret"),
        previous_until=float(until) if until else 0.0,
        rate_limit=float(rate) if rate else None,
        max_in_flight=int(_text(fields, "max_in_flight") or 32),
        ordered=_text(fields, "ordered") == "1",
        headers=json.loads(headers) if headers else None,
    )


def load_all(client: redis.Redis, keys: Keys) -> list[Endpoint]:
    """Every endpoint on record, oldest first (two round trips, whatever their number)."""
    ids: list[bytes] = client.zrange(keys.endpoints, 0, -1)  # type: ignore[assignment]
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for endpoint_id in ids:
        pipe.hgetall(keys.endpoint(endpoint_id.decode()))
    return [parse(fields) for fields in pipe.execute() if fields]


async def load_all_async(conn: PipelinedRedis, keys: Keys) -> list[Endpoint]:
    """``load_all`` on the pipelined connection, for code on the process loop (must not block)."""
    ids = await conn.execute("ZRANGE", keys.endpoints, 0, -1)
    replies = await asyncio.gather(
        *(conn.execute("HGETALL", keys.endpoint(i.decode())) for i in ids)
    )
    return [parse(dict(zip(raw[::2], raw[1::2], strict=True))) for raw in replies if raw]


def _write(writes: Pipeline | Commands, *command: Any) -> None:
    """Queue a command neither collector spells as a method (both send it within the same MULTI)."""
    if isinstance(writes, Commands):
        writes.items.append(command)
    else:
        writes.execute_command(*command)  # type: ignore[no-untyped-call]


def bump_version(writes: Pipeline | Commands, keys: Keys) -> None:
    """Queue the INCR that tells every worker's cache the endpoints changed."""
    _write(writes, "INCR", keys.endpoints_version)


class EndpointCache:
    """One process's endpoint list, loaded again only when ``Keys.endpoints_version`` moved.

    Threads may load at the same time after a change; each stores a complete list, so the
    worst case is one extra load. Callers read the version before they load: a change landing
    between the two leaves a newer list under the older version, which the next check replaces.
    """

    def __init__(self) -> None:
        self.version: bytes | None = b"never read"
        self.endpoints: tuple[Endpoint, ...] = ()

    def given(
        self, version: bytes | str | None, load: Callable[[], list[Endpoint]]
    ) -> tuple[Endpoint, ...]:
        """The endpoints for the ``version`` just read, calling ``load`` if it is not cached."""
        seen = version.encode() if isinstance(version, str) else version
        if seen != self.version:
            endpoints = tuple(load())
            self.endpoints, self.version = endpoints, seen
            return endpoints
        return self.endpoints


def offer(
    writes: Pipeline | Commands,
    keys: Keys,
    endpoints: Iterable[Endpoint],
    *,
    event_type: str,
    source: str,
    body: dict[str, Any],
    parent: str,
    owner: str,
    max_attempts: int,
    ttl: int,
    traceparent: str = "",
    tracestate: str = "",
) -> list[str]:
    """Queue one delivery of ``body`` per endpoint that wants it; returns the delivery ids.

    ``traceparent``/``tracestate``: the trace the deliveries join (core/tracing.py), as for a
    callback or a forward.
    """
    ids = []
    now_us = int(time.time() * 1_000_000)
    for endpoint in endpoints:
        if not endpoint.wants(event_type, source):
            continue
        delivery_id = add_delivery(
            writes,
            keys,
            url=endpoint.url,
            body=body,
            parent=parent,
            owner=owner,
            max_attempts=max_attempts,
            ttl=ttl,
            endpoint_id=endpoint.id,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        listed = keys.endpoint_deliveries(endpoint.id)
        writes.zadd(listed, {delivery_id: now_us})
        _write(writes, "ZREMRANGEBYRANK", listed, 0, -ENDPOINT_DELIVERIES_KEPT - 1)
        if endpoint.ordered:
            add_to_sequence(writes, keys, endpoint.id, delivery_id)
        ids.append(delivery_id)
    return ids


def add_to_sequence(
    writes: Pipeline | Commands, keys: Keys, endpoint_id: str, delivery_id: str
) -> None:
    """Queue an ordered endpoint's delivery in its sequence by acceptance (endpoint_limits.py)."""
    # the offering process's clock, strictly rising: events offered one after another keep
    # their order even within one clock tick
    _last_accepted[0] = max(time.time(), _last_accepted[0] + 1e-6)
    writes.zadd(keys.endpoint_limit(endpoint_id, "sequence"), {delivery_id: _last_accepted[0]})


_last_accepted = [0.0]
