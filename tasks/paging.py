"""Cursor paging over a sorted set whose scores are integers (epoch microseconds).

A cursor names the last item shown ("<score>:<member>"), not an offset: items added or removed
meanwhile neither repeat nor skip one that stays.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis


class InvalidCursor(ValueError):
    """A page cursor we did not hand out."""


async def page_of(
    redis: Redis, key: str, limit: int, cursor: str | None, *, newest_first: bool
) -> tuple[list[str], str | None]:
    """Members of the sorted set ``key`` after ``cursor`` ("<score>:<member>"), and the next."""
    after: tuple[float, str] | None = None
    if cursor is not None:
        score_text, sep, member = cursor.partition(":")
        if not sep or not (score_text.isascii() and score_text.isdigit()) or not member:
            raise InvalidCursor(cursor)
        after = (float(score_text), member)
    found: list[tuple[float, str]] = []
    offset = 0
    while len(found) <= limit:
        if newest_first:
            top = after[0] if after else "+inf"
            batch = cast(
                list[tuple[bytes, float]],
                await redis.zrevrangebyscore(
                    key, top, "-inf", start=offset, num=limit + 1, withscores=True
                ),
            )
        else:
            low = after[0] if after else "-inf"
            batch = cast(
                list[tuple[bytes, float]],
                await redis.zrangebyscore(
                    key, low, "+inf", start=offset, num=limit + 1, withscores=True
                ),
            )
        if not batch:
            break
        offset += len(batch)
        for raw, score in batch:
            item = (float(score), raw.decode())
            # members sharing the cursor's score: Redis orders them by member, as tuples do
            if after is not None and (item >= after if newest_first else item <= after):
                continue
            found.append(item)
    page = found[:limit]
    following = f"{int(page[-1][0])}:{page[-1][1]}" if len(found) > limit else None
    return [member for _, member in page], following
