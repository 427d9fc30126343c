"""Console dead letters: newest first, filter by kind and time, page back, inspect one, replay.

Replaying one is one click (a POST with the CSRF token); a selection is confirmed on a page of
its own that lists what will start again. Everything of a kind in a time range is confirmed on a
page stating how many, then replayed server-side in batches (tasks/dead_letter_walk.py) in the
one request, ending on a page saying how many were replayed and how many skipped.
Times in the forms are UTC (an <input type="datetime-local"> carries no zone).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response

from core.kinds import KINDS
from gateway.console.session import CsrfDep, SessionDep
from gateway.console.web import PREFIX, ConsoleError, ConsoleRoute, form_time, render
from tasks import dead_letter_walk as walk
from tasks.dead_letters import DeadLetters
from tasks.paging import InvalidCursor

router = APIRouter(
    prefix=f"{PREFIX}/dead-letters", route_class=ConsoleRoute, include_in_schema=False
)

PAGE_SIZE = 100
# every job kind, and the callbacks' deliveries (listed under "callback")
FILTER_KINDS = (*KINDS, "callback")


def _store(request: Request) -> DeadLetters:
    store: DeadLetters = request.app.state.dead_letters
    return store


def _filters(kind: str, since: str, until: str) -> tuple[str | None, float, float]:
    if kind and kind not in FILTER_KINDS:
        raise ConsoleError(400, f"No kind {kind}.")
    low, high = form_time(since, "since"), form_time(until, "until")
    return kind or None, low if low is not None else 0.0, high if high is not None else math.inf


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@router.get("")
async def dead_letters_page(
    request: Request,
    _: SessionDep,
    kind: str = "",
    since: str = "",
    until: str = "",
    cursor: str = "",
) -> Response:
    """The newest dead letters, optionally of one kind and time range; "older" pages back."""
    chosen, low, high = _filters(kind, since, until)
    try:
        found = await walk.page(
            _store(request), kind=chosen, since=low, until=high, limit=PAGE_SIZE,
            cursor=cursor or None,
        )  # fmt: skip
    except InvalidCursor:
        raise ConsoleError(400, "That page link is not one the console made.") from None
    filters = {"kind": kind, "since": since, "until": until}
    older = f"?{urlencode({**filters, 'cursor': found.older})}" if found.older else None
    context = {
        "entries": found.entries, "kinds": FILTER_KINDS, "page_size": PAGE_SIZE, "older": older,
        "scanned_out": found.scanned_out, "paged": bool(cursor), **filters,
    }  # fmt: skip
    return render(request, "dead_letters.html", context)


@router.get("/replay-range")
async def confirm_range(
    request: Request, _: SessionDep, kind: str = "", since: str = "", until: str = ""
) -> Response:
    """The confirmation of replaying everything of a kind in a range: how many, exactly which.

    The range ends now at the latest (and the form carries that end): a replayed job dying
    again while the replay runs is not replayed again.
    """
    chosen, low, high = _filters(kind, since, until)
    high = min(high, time.time())
    total = await walk.count(_store(request), kind=chosen, since=low, until=high)
    context = {"kind": kind, "since": _iso(low), "until": _iso(high), "total": total}
    return render(request, "confirm_range.html", context)


@router.post("/replay-range")
async def replay_range(
    request: Request,
    _: CsrfDep,
    kind: Annotated[str, Form()] = "",
    since: Annotated[str, Form()] = "",
    until: Annotated[str, Form()] = "",
) -> Response:
    """Replay everything of the kind in the range, in batches, and say what happened."""
    chosen, low, high = _filters(kind, since, until)
    replayed, skipped = await walk.replay_range(
        _store(request), kind=chosen, since=low, until=min(high, time.time())
    )
    summary = {"replayed": replayed, "skipped": skipped, "kind": kind or "any kind"}
    return render(request, "replayed.html", {"outcomes": [], "summary": summary})


@router.post("/confirm")
async def confirm_replay(
    request: Request, _: CsrfDep, selected: Annotated[list[str] | None, Form()] = None
) -> Response:
    """The confirmation step of replaying a selection: what will start again."""
    chosen = list(dict.fromkeys(selected or []))
    if not chosen:
        raise ConsoleError(400, "Select at least one dead letter to replay.")
    store = _store(request)
    entries = [entry for member in chosen if (entry := await store.get(member)) is not None]
    return render(request, "confirm_replay.html", {"entries": entries, "chosen": chosen})


@router.post("/replay")
async def replay(
    request: Request, _: CsrfDep, ids: Annotated[list[str] | None, Form()] = None
) -> Response:
    """Start the given dead letters again (same ids); the page says what each one did."""
    chosen = list(dict.fromkeys(ids or []))
    if not chosen:
        raise ConsoleError(400, "Nothing to replay.")
    store = _store(request)
    outcomes = [(member, await store.replay(member)) for member in chosen]
    return render(request, "replayed.html", {"outcomes": outcomes, "summary": None})


@router.get("/{member}")
async def dead_letter_page(member: str, request: Request, _: SessionDep) -> Response:
    """One dead letter: its payload and last error."""
    entry = await _store(request).get(member)
    if entry is None:
        raise ConsoleError(404, f"{member} is not a dead letter (now).")
    return render(request, "dead_letter.html", {"entry": entry})
