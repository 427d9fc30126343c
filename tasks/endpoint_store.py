"""The API's side of endpoints: create, read, page, change and delete the records
tasks/endpoints.py describes; every change also bumps the version the workers' caches compare.

One piece (~260 lines): every change an operator makes to an endpoint, each with the version
bump the workers' caches compare, in one place.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from redis.asyncio import Redis

from core.statuses import EndpointStatus
from tasks.dead_letters import DeadLetters
from tasks.deliveries import view as delivery_view
from tasks.endpoint_limits import release_held
from tasks.keys import Keys
from tasks.paging import page_of
from tasks.store import decode, now_iso

# A change applies only to an endpoint that still exists (a PATCH racing a DELETE must not leave
# half a record behind), and bumps the version in the same step.
_CHANGE = """
-- KEYS: endpoint hash, version counter; ARGV: field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('INCR', KEYS[2])
return 1
"""

# Held by a record in a form the API does not show as such (JSON text, "1", epoch seconds).
_JSON_FIELDS = ("event_types", "sources", "headers")


def new_secret() -> str:
    """A fresh Standard Webhooks signing secret: whsec_ and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_endpoint_id() -> str:
    """A fresh endpoint id."""
    return f"ep_{uuid.uuid4().hex}"


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def _iso(epoch: Any) -> str | None:
    if epoch in (None, "", 0):
        return None
    return datetime.fromtimestamp(float(epoch), UTC).isoformat()


def stored(fields: Mapping[str, Any]) -> dict[str, str]:
    """API-side values as the record holds them (JSON lists and objects, "1"/"0", "" for None)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            out[name] = json.dumps(
                value if value is not None else ({} if name == "headers" else [])
            )
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = "" if value is None else str(value)
    return out


def shown(record: Mapping[Any, Any]) -> dict[str, Any]:
    """A record as the API shows it (secrets left out)."""
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in record.items()
    }
    headers = fields.get("headers") or ""
    previous_until = fields.get("previous_until") or ""
    return {
        "id": fields["id"],
        "url": fields["url"],
        "event_types": json.loads(fields.get("event_types") or '["*"]'),
        "sources": json.loads(fields.get("sources") or "[]"),
        "description": fields.get("description") or "",
        "rate_limit": float(fields["rate_limit"]) if fields.get("rate_limit") else None,
        "max_in_flight": int(fields.get("max_in_flight") or 32),
        "ordered": fields.get("ordered") == "1",
        "headers": json.loads(headers) if headers else {},
        "status": fields.get("status") or EndpointStatus.ENABLED,
        "disabled_reason": fields.get("disabled_reason") or None,
        "failure_streak": int(fields.get("failure_streak") or 0),
        "failing_since": _iso(fields.get("failing_since")),
        "last_success_at": fields.get("last_success_at") or None,
        "last_failure_at": fields.get("last_failure_at") or None,
        "created_at": fields.get("created_at"),
        "updated_at": fields.get("updated_at"),
        "previous_secret_until": (
            _iso(previous_until)
            if fields.get("previous_secret") and float(previous_until or 0) > time.time()
            else None
        ),
    }


async def on_enabled(redis: Redis, keys: Keys, endpoint_id: str) -> None:
    """After the operator enables an endpoint: send what was held while it was disabled."""
    await release_held(redis, keys, endpoint_id)


class EndpointStore:
    """Endpoint records on the API's Redis client."""

    def __init__(self, redis: Redis, keys: Keys, dead_letters: DeadLetters) -> None:
        self.redis, self.keys, self.dead_letters = redis, keys, dead_letters
        self._change = redis.register_script(_CHANGE)

    async def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Record a new enabled endpoint with a fresh secret; returns its view and secret."""
        endpoint_id, secret, now = new_endpoint_id(), new_secret(), now_iso()
        record: dict[Any, Any] = {
            **stored(fields),
            "id": endpoint_id,
            "status": EndpointStatus.ENABLED,
            "disabled_reason": "",
            "secret": secret,
            "previous_secret": "",
            "previous_until": "",
            "failure_streak": "0",
            "failing_since": "",
            "last_success_at": "",
            "last_failure_at": "",
            "created_at": now,
            "updated_at": now,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.endpoint(endpoint_id), mapping=record)
            pipe.zadd(self.keys.endpoints, {endpoint_id: _now_us()})
            pipe.incr(self.keys.endpoints_version)
            await pipe.execute()
        return {**shown(record), "deliveries": 0, "secret": secret}

    async def get(self, endpoint_id: str) -> dict[str, Any] | None:
        """An endpoint's view with its delivery count, or None."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.endpoint(endpoint_id))
            pipe.zcard(self.keys.endpoint_deliveries(endpoint_id))
            record, count = await pipe.execute()
        if not record:
            return None
        return {**shown(record), "deliveries": count}

    async def page(
        self, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Endpoints oldest first (new ones join the end, so a walk sees each once)."""
        ids, following = await page_of(
            self.redis, self.keys.endpoints, limit, cursor, newest_first=False
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for endpoint_id in ids:
                pipe.hgetall(self.keys.endpoint(endpoint_id))
                pipe.zcard(self.keys.endpoint_deliveries(endpoint_id))
            replies = await pipe.execute()
        views = [
            {**shown(record), "deliveries": count}
            for record, count in zip(replies[::2], replies[1::2], strict=True)
            if record
        ]
        return views, following

    async def update(self, endpoint_id: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """Set ``fields`` on an existing endpoint; its new view, or None if there is none."""
        record = {**stored(fields), "updated_at": now_iso()}
        args = [part for pair in record.items() for part in pair]
        changed = await self._change(
            keys=[self.keys.endpoint(endpoint_id), self.keys.endpoints_version], args=args
        )
        return await self.get(endpoint_id) if changed else None

    async def delete(self, endpoint_id: str) -> bool:
        """Remove an endpoint and its delivery list (the deliveries stay on their parents)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.endpoint(endpoint_id))
            pipe.zrem(self.keys.endpoints, endpoint_id)
            pipe.delete(self.keys.endpoint_deliveries(endpoint_id))
            pipe.incr(self.keys.endpoints_version)
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    async def rotate(self, endpoint_id: str, grace_seconds: int) -> dict[str, Any] | None:
        """A new secret; the current one keeps signing for ``grace_seconds``. None if unknown."""
        current = cast(
            bytes | None, await self.redis.hget(self.keys.endpoint(endpoint_id), "secret")
        )
        if current is None:
            return None
        secret, until = new_secret(), time.time() + grace_seconds
        fields: dict[str, Any] = {"secret": secret, "previous_until": until}
        fields["previous_secret"] = current.decode()
        if grace_seconds == 0:
            fields["previous_secret"], fields["previous_until"] = "", ""
        if await self.update(endpoint_id, fields) is None:
            return None
        return {
            "id": endpoint_id,
            "secret": secret,
            "previous_secret_until": _iso(until) if grace_seconds else None,
        }

    async def set_status(self, endpoint_id: str, status: EndpointStatus) -> dict[str, Any] | None:
        """Enable (a fresh start: no streak, no reason) or disable by the operator."""
        if status == EndpointStatus.ENABLED:
            fields = {"status": status, "disabled_reason": "", "failure_streak": 0}
            fields |= {"failing_since": ""}
        else:
            fields = {"status": status, "disabled_reason": "disabled by the operator"}
        view = await self.update(endpoint_id, fields)
        if view is not None and status == EndpointStatus.ENABLED:
            await on_enabled(self.redis, self.keys, endpoint_id)
        return view

    async def deliveries(
        self, endpoint_id: str, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The endpoint's deliveries, newest first, each with its attempts."""
        key = self.keys.endpoint_deliveries(endpoint_id)
        ids, following = await page_of(self.redis, key, limit, cursor, newest_first=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self.keys.delivery(delivery_id))
                pipe.lrange(self.keys.delivery_attempts(delivery_id), 0, -1)
            replies = await pipe.execute()
        views = [
            delivery_view(decode(record), attempts)
            for record, attempts in zip(replies[::2], replies[1::2], strict=True)
            if record  # expired with its parent (JOB_TTL_SECONDS)
        ]
        return views, following

    async def recover(self, endpoint_id: str, since: float, limit: int) -> list[str]:
        """Replay every failed or dead delivery to it offered since ``since`` (same ids)."""
        key = self.keys.endpoint_deliveries(endpoint_id)
        raw = await self.redis.zrangebyscore(key, int(since * 1_000_000), "+inf")
        replayed = []
        for member in cast(list[bytes], raw):
            delivery_id = member.decode()
            # only dead letters replay: a delivered or pending one is left alone
            if await self.dead_letters.replay(f"delivery:{delivery_id}"):
                replayed.append(delivery_id)
                if len(replayed) >= limit:
                    break
        return replayed

    async def limit_states(self, endpoint_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each endpoint's delivery-limit state as it is now (tasks/endpoint_limits.py), read only.

        in_flight: attempts holding an unexpired lease; held: deliveries kept while disabled;
        parked: deliveries waiting out a pause; probe_in: seconds until a paused endpoint's next
        probe may go (None: no probe pending, the next delivery is the probe). One round trip.
        """
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for endpoint_id in endpoint_ids:
                part = partial(self.keys.endpoint_limit, endpoint_id)
                pipe.zcount(part("inflight"), now, "+inf")
                pipe.zcard(part("held"))
                pipe.zcard(part("parked_order"))
                pipe.pttl(part("probe"))
            replies = await pipe.execute()
        states = {}
        for at, endpoint_id in enumerate(endpoint_ids):
            in_flight, held, parked, probe_ms = replies[4 * at : 4 * at + 4]
            states[endpoint_id] = {
                "in_flight": int(in_flight),
                "held": int(held),
                "parked": int(parked),
                "probe_in": probe_ms / 1000 if probe_ms > 0 else None,
            }
        return states
