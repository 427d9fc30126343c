"""Listing inbound events newest first, by source, type and status, without KEYS or SCAN.

What is indexed, and why only that: the ingest script (tasks/events.py) ZADDs each event's id,
scored by its received time in epoch µs, to every event's sorted set (Keys.events_by_time) and to
its source's (Keys.events_from), and trims both past the event TTL. Sources come from the sources
file, so their sets are few. Types are chosen by the senders (an index per type would let anyone
with a valid signature make keys without end) and statuses change twice on the worker, in the claim
script and the final transaction (an index per status would add commands to both), so those two
filters are applied while reading, a bounded number of records per request (``max_scan``): a page
that hit the bound says so, and its cursor continues where the scan stopped.

Expiry: an event's hash lives at least as long as its index entry (the script writes both, and
EXPIRE is renewed as the event moves on), so a listed id whose hash is gone was evicted or deleted:
it is skipped and removed from the sets then (lazily), and reading trims by score too.

Cursors name the last record looked at ("<score>:<id>", as tasks/paging.py), not an offset: events
arriving meanwhile neither repeat nor shift a page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from handlers.webhooks import matches
from tasks.keys import Keys
from tasks.paging import InvalidCursor

# what a listed row shows; the body, headers and routes are read on the event's own page
LISTED_FIELDS = ("source", "type", "status", "received_at", "body_bytes", "reason")
BATCH = 100  # ids read per round trip while filling a page


def trim_below(received_us: int, ttl_seconds: int) -> int:
    """The score (epoch µs) below which index entries are past the event TTL."""
    return received_us - ttl_seconds * 1_000_000


@dataclass(frozen=True)
class EventPage:
    """One page of a listing and where the next one starts."""

    events: list[dict[str, Any]]
    cursor: str | None  # the next (older) page's cursor; None: nothing older
    scanned: int  # records looked at for this page
    bound_hit: bool = False  # the scan stopped at max_scan before the page was full
    skipped_expired: int = 0  # listed ids whose records were gone (now taken out)


def parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    """A cursor we handed out, as (score, id); InvalidCursor otherwise."""
    if cursor is None or cursor == "":
        return None
    score_text, sep, member = cursor.partition(":")
    if not sep or not (score_text.isascii() and score_text.isdigit()) or not member:
        raise InvalidCursor(cursor)
    return int(score_text), member


class EventIndex:
    """Reads the event indexes (the ingest script writes them)."""

    def __init__(self, redis: Redis, keys: Keys, ttl: int) -> None:
        self.redis, self.keys, self.ttl = redis, keys, ttl

    async def page(
        self,
        *,
        source: str | None = None,
        type_pattern: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        max_scan: int = 1000,
        now_us: int,
        sources: Sequence[str] = (),
    ) -> EventPage:
        """Events newest first after ``cursor``: of ``source`` (an index), matching the glob
        ``type_pattern`` and ``status`` (checked on the records, at most ``max_scan`` of them).

        ``sources`` are the configured sources, whose sets lose an expired id with the main one.
        """
        after = parse_cursor(cursor)
        key = self.keys.events_from(source) if source else self.keys.events_by_time
        await self.redis.zremrangebyscore(key, "-inf", f"({trim_below(now_us, self.ttl)}")
        found: list[dict[str, Any]] = []
        gone: list[str] = []
        scanned = 0
        last: tuple[int, str] | None = after  # the last record looked at: the next cursor
        top: int | str = after[0] if after else "+inf"
        skip = 0  # ids at score ``top`` already read (keyset, not offset: arrivals shift nothing)
        # unfiltered, every id read is shown: read no more than the page (and one to know if more)
        size = BATCH if status or type_pattern else min(BATCH, limit + 1)
        while len(found) < limit and scanned < max_scan:
            batch = cast(
                list[tuple[bytes, float]],
                await self.redis.zrevrangebyscore(
                    key, top, "-inf", start=skip, num=size, withscores=True
                ),
            )
            read = [(int(score), raw.decode()) for raw, score in batch]
            # ids sharing the cursor's score: Redis orders them by id, as tuples compare
            items = [item for item in read if after is None or item < after]
            records = await self._fetch([member for _, member in items])
            for item, record in zip(items, records, strict=True):
                if len(found) >= limit or scanned >= max_scan:
                    break
                scanned += 1
                last = item
                if record is None:
                    gone.append(item[1])
                elif (not status or record["status"] == status) and (
                    not type_pattern or matches(record["type"] or "", [type_pattern])
                ):
                    found.append(record)
            else:
                if len(read) < size:  # every id left was looked at: nothing older
                    last = None
                    break
                lowest = read[-1][0]
                same = sum(1 for score, _ in read if score == lowest)
                skip = skip + same if lowest == top else same
                top = lowest
        if gone:  # after reading: taking them out meanwhile would move what is below
            await self._forget(gone, sources)
        bound_hit = len(found) < limit and scanned >= max_scan and last is not None
        following = f"{last[0]}:{last[1]}" if last is not None and last != after else None
        return EventPage(found, following, scanned, bound_hit, len(gone))

    async def _fetch(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """Each id's listed fields (None: its hash is gone), in one round trip."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hmget(self.keys.event(event_id), *LISTED_FIELDS)
            replies = await pipe.execute()
        records: list[dict[str, Any] | None] = []
        for event_id, values in zip(ids, replies, strict=True):
            if all(value is None for value in values):
                records.append(None)
                continue
            record: dict[str, Any] = {"id": event_id}
            for name, value in zip(LISTED_FIELDS, values, strict=True):
                record[name] = value.decode() if isinstance(value, bytes) else value
            record["body_bytes"] = int(record["body_bytes"] or 0)
            records.append(record)
        return records

    async def _forget(self, ids: list[str], sources: Sequence[str]) -> None:
        """Take ids whose records are gone out of every index they may be in."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.events_by_time, *ids)
            for name in sources:
                pipe.zrem(self.keys.events_from(name), *ids)
            await pipe.execute()
