"""Console dead letters: newest first, filter by kind, inspect one, replay one or a selection.

Replaying one is one click (a POST with the CSRF token); a selection is confirmed on a page of
its own that lists what will start again. Both end on a page saying what each replay did.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from core.kinds import KINDS
from gateway.console.session import CsrfDep, SessionDep
from gateway.console.web import PREFIX, ConsoleError, ConsoleRoute, render
from tasks.dead_letters import DeadLetters

router = APIRouter(
    prefix=f"{PREFIX}/dead-letters", route_class=ConsoleRoute, include_in_schema=False
)

PAGE_SIZE = 100
# every job kind, and the callbacks' deliveries (listed under "callback")
FILTER_KINDS = (*KINDS, "callback")


def _store(request: Request) -> DeadLetters:
    store: DeadLetters = request.app.state.dead_letters
    return store


@router.get("")
async def dead_letters_page(request: Request, _: SessionDep, kind: str = "") -> Response:
    """The newest dead letters, optionally of one kind."""
    if kind and kind not in FILTER_KINDS:
        raise ConsoleError(400, f"No kind {kind}.")
    entries = await _store(request).list(
        kind=kind or None, since=0, until=float("inf"), limit=PAGE_SIZE, newest_first=True
    )
    context = {"entries": entries, "kind": kind, "kinds": FILTER_KINDS, "page_size": PAGE_SIZE}
    return render(request, "dead_letters.html", context)


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
    return render(request, "replayed.html", {"outcomes": outcomes})


@router.get("/{member}")
async def dead_letter_page(member: str, request: Request, _: SessionDep) -> Response:
    """One dead letter: its payload and last error."""
    entry = await _store(request).get(member)
    if entry is None:
        raise ConsoleError(404, f"{member} is not a dead letter (now).")
    return render(request, "dead_letter.html", {"entry": entry})
