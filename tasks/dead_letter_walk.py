"""Walking the dead-letter set by time of death: pages past the newest, counts and range replays.

The set's scores are epoch seconds as floats (time of death), so the paging cursor is
"<score>:<member>" with the score written exactly (``repr``) and read back with ``float``: the
last item shown, not an offset, so letters replayed or added meanwhile neither repeat nor skip
one that stays. A kind is not in the member ('job:<id>' / 'delivery:<id>'): a delivery is always
of kind 'callback'; a job's kind is one HGET, pipelined for a whole batch. Everything here reads
SCAN_BATCH members per round trip, so 10,000 dead letters are 20 batches, never one big reply.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from tasks.dead_letters import DeadLetters, _entry, _record_key
from tasks.paging import InvalidCursor
from tasks.store import decode

SCAN_BATCH = 500
# a filtered page stops reading after this many members and hands out a cursor where it stopped
PAGE_SCAN_LIMIT = 10_000
_CURSOR = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?):((?:job|delivery):[!-~]{1,180})$")

Position = tuple[float, str]


def cursor_text(position: Position) -> str:
    """The cursor naming ``position`` (score, member)."""
    return f"{position[0]!r}:{position[1]}"


def parse_cursor(text: str) -> Position:
    """(score, member) of a cursor ``cursor_text`` made; InvalidCursor otherwise."""
    found = _CURSOR.match(text)
    if found is None or not math.isfinite(score := float(found.group(1))):
        raise InvalidCursor(text)
    return score, found.group(2)


@dataclass(frozen=True)
class Page:
    """One page of dead letters, newest first, and the cursor of the next (older) one."""

    entries: list[dict[str, Any]]
    older: str | None
    scanned_out: bool = False  # stopped at PAGE_SCAN_LIMIT: the next page continues the scan


async def _batches(
    store: DeadLetters,
    since: float,
    until: float,
    *,
    newest_first: bool,
    after: Position | None = None,
) -> AsyncIterator[list[Position]]:
    """Members in [since, until] past ``after``, SCAN_BATCH a round trip, in order."""
    key, offset = store.keys.dead_letters, 0
    while True:
        if newest_first:
            top = after[0] if after else until
            raw = await store.redis.zrevrangebyscore(
                key, top, since, start=offset, num=SCAN_BATCH, withscores=True
            )
        else:
            low = after[0] if after else since
            raw = await store.redis.zrangebyscore(
                key, low, until, start=offset, num=SCAN_BATCH, withscores=True
            )
        found = [(float(s), m.decode()) for m, s in cast(list[tuple[bytes, float]], raw)]
        # members sharing the cursor's score: Redis orders them by member, as tuples do
        fresh = [
            item
            for item in found
            if after is None or (item < after if newest_first else item > after)
        ]
        if fresh:
            yield fresh
            after, offset = fresh[-1], 0
        elif len(found) == SCAN_BATCH:
            offset += SCAN_BATCH  # a full batch of ties already seen: read past them
            continue
        if len(found) < SCAN_BATCH:
            return


async def _kinds(store: DeadLetters, members: list[str]) -> list[str | None]:
    """Each member's kind: 'callback' for a delivery, a job's kind (None: record gone)."""
    jobs = [m for m in members if m.startswith("job:")]
    kinds: dict[str, str | None] = {}
    if jobs:
        async with store.redis.pipeline(transaction=False) as pipe:
            for member in jobs:
                pipe.hget(_record_key(store.keys, member)[1], "kind")
            for member, kind in zip(jobs, await pipe.execute(), strict=True):
                kinds[member] = kind.decode() if kind is not None else None
    return [("callback" if m.startswith("delivery:") else kinds.get(m)) for m in members]


async def _matching(store: DeadLetters, batch: list[Position], kind: str | None) -> list[Position]:
    if kind is None:
        return batch
    if kind == "callback":
        return [item for item in batch if item[1].startswith("delivery:")]
    kinds = await _kinds(store, [member for _, member in batch])
    return [item for item, found in zip(batch, kinds, strict=True) if found == kind]


async def page(
    store: DeadLetters,
    *,
    kind: str | None,
    since: float,
    until: float,
    limit: int,
    cursor: str | None,
) -> Page:
    """Dead letters newest first, ``limit`` a page, after ``cursor``; kind and time filtered."""
    after = parse_cursor(cursor) if cursor else None
    chosen: list[Position] = []
    scanned, last, more = 0, after, False
    async for batch in _batches(store, since, until, newest_first=True, after=after):
        for item in await _matching(store, batch, kind):
            if len(chosen) == limit:
                more = True
                break
            chosen.append(item)
        scanned += len(batch)
        last = batch[-1]
        if more or (scanned >= PAGE_SCAN_LIMIT and len(chosen) < limit):
            break
    scanned_out = not more and scanned >= PAGE_SCAN_LIMIT and len(chosen) < limit
    entries = await _entries(store, [member for _, member in chosen])
    if more:
        return Page(entries, cursor_text(chosen[-1]))
    if scanned_out and last is not None:
        return Page(entries, cursor_text(last), scanned_out=True)
    return Page(entries, None)


async def _entries(store: DeadLetters, members: list[str]) -> list[dict[str, Any]]:
    if not members:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.hgetall(_record_key(store.keys, member)[1])
        records = await pipe.execute()
    return [_entry(m, decode(raw)) for m, raw in zip(members, records, strict=True) if raw]


async def count(store: DeadLetters, *, kind: str | None, since: float, until: float) -> int:
    """How many dead letters of ``kind`` (None: any) died in [since, until]."""
    if kind is None:
        return int(await store.redis.zcount(store.keys.dead_letters, since, until))
    total = 0
    async for batch in _batches(store, since, until, newest_first=False):
        total += len(await _matching(store, batch, kind))
    return total


async def replay_range(
    store: DeadLetters, *, kind: str | None, since: float, until: float
) -> tuple[int, int]:
    """Replay every dead letter of ``kind`` that died in [since, until]: (replayed, skipped).

    Oldest first, SCAN_BATCH at a time: one round trip reads the batch, one its jobs' kinds, one
    runs the replay script for each. The script removes a letter from the set and queues it in
    one step, so one replayed meanwhile (another request, another operator) is skipped, not sent
    twice. ``until`` should not be in the future: a replayed job dying again must not come back
    into the walk.
    """
    replayed = skipped = 0
    async for batch in _batches(store, since, until, newest_first=False):
        members = [member for _, member in batch]
        kinds = await _kinds(store, members)
        calls = []
        for member, found in zip(members, kinds, strict=True):
            if kind is not None and found != kind:
                continue
            call = store.replay_call(member, found)
            if call is None:
                skipped += 1  # a job whose record or kind is gone
            else:
                calls.append(call)
        done = await store.replay_many(calls)
        replayed += sum(done)
        skipped += len(done) - sum(done)
    return replayed, skipped
