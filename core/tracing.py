"""W3C trace context (traceparent, tracestate): read it, mint ids, pass it on, the current span.

A job or event keeps the context it came in with as ``traceparent`` (our ingest span as the
parent) and ``tracestate`` on its record; every run of it and every outbound request it makes is a
child span: the same trace id, a new span id. A malformed ``traceparent`` is ignored and a new
trace started, as the spec says (never an error to the caller); ``tracestate`` then goes too.
One piece: reading, minting, the current span and handing spans to core/otel.py are one contract.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

from core import otel

# Past this a tracestate is cut at a list-member boundary (the spec's 32 members of at most
# 256 characters each would allow ~8 kB on every record and every outbound request).
MAX_TRACESTATE = 512
_MEMBER = 128  # the spec: members longer than this go first when truncating

_HEX_ID = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_PRINTABLE = re.compile(r"[\x20-\x7e]*")

T = TypeVar("T")

# Ids come from the process's PRNG, reseeded from os.urandom at start and after every fork (as
# tasks/protocol.py new_id): one is minted per request on the ingest hot path. Not secret.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_trace_id() -> str:
    """A fresh 16-byte trace id as 32 lowercase hex digits (never all zero)."""
    found = _random.randbytes(16).hex()
    return found if found != _ZERO_TRACE else new_trace_id()


def new_span_id() -> str:
    """A fresh 8-byte span id as 16 lowercase hex digits (never all zero)."""
    found = _random.randbytes(8).hex()
    return found if found != _ZERO_SPAN else new_span_id()


def new_trace() -> TraceContext:
    """The first span of a new trace (sampled: we start it, so we record it)."""
    return TraceContext(new_trace_id(), new_span_id())


class TraceContext(NamedTuple):
    """One span of a trace: its ids, the caller's flags, the vendors' tracestate, its parent.

    A NamedTuple, not a frozen dataclass: one is built per request on the ingest hot path, and a
    frozen dataclass's __init__ costs several times more.
    """

    trace_id: str
    span_id: str
    flags: str = "01"
    state: str = ""
    parent_id: str = ""  # the span this one is a child of ('' for a trace we started)

    @property
    def traceparent(self) -> str:
        """This span as a version-00 ``traceparent`` header: what a callee sees as its parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span of the same trace, this one its parent."""
        return self._replace(span_id=new_span_id(), parent_id=self.span_id)

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate`` if any) for an outbound request made in this span."""
        if self.state:
            return {"traceparent": self.traceparent, "tracestate": self.state}
        return {"traceparent": self.traceparent}


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid ``traceparent``; None for absent or malformed.

    Version 00 must be exactly 55 characters; a later version may carry more fields after a
    '-', which are ignored (the spec's forward compatibility); version ff is invalid. Hex digits
    are lowercase only and neither id may be all zero.
    """
    if not value:
        return None
    value = value.strip(" \t")
    found = _HEX_ID.fullmatch(value, 0, 55)
    if found is None or value[:2] == "ff":
        return None
    if len(value) > 55 and (value[:2] == "00" or value[55] != "-"):
        return None
    trace_id, parent_id, flags = found.groups()
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def clean_tracestate(value: str | None) -> str:
    """``tracestate`` as given, cut at a member boundary to at most MAX_TRACESTATE characters.

    Oversized members go first (as the spec asks of a vendor that truncates); a value that is not
    printable ASCII is dropped whole, since it is not one the spec allows.
    """
    if not value:
        return ""
    value = value.strip(" \t")
    if not _PRINTABLE.fullmatch(value):
        return ""
    if len(value) <= MAX_TRACESTATE:
        return value
    kept: list[str] = []
    size = -1
    for member in value.split(","):
        member = member.strip(" \t")
        if not member or len(member) > _MEMBER:
            continue
        if size + 1 + len(member) > MAX_TRACESTATE:
            break
        kept.append(member)
        size += 1 + len(member)
    return ",".join(kept)


def ingest(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
    """Our ingest span for a request: a child of the caller's ``traceparent``, else a new trace."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return new_trace()
    trace_id, parent_id, flags = parsed
    return TraceContext(trace_id, new_span_id(), flags, clean_tracestate(tracestate), parent_id)


def from_record(record: dict[str, object]) -> TraceContext:
    """A new span for one run of a recorded job, event or delivery (the record's span its parent).

    A record written before trace context was kept (or with a damaged field) starts a new trace.
    """
    parsed = parse_traceparent(str(record.get("traceparent") or ""))
    if parsed is None:
        return new_trace()
    trace_id, parent_id, flags = parsed
    state = clean_tracestate(str(record.get("tracestate") or ""))
    return TraceContext(trace_id, new_span_id(), flags, state, parent_id)


def record_fields(trace: TraceContext | None) -> dict[str, str]:
    """The fields a record keeps of ``trace`` (its span the parent of every run of the record);
    none outside any trace."""
    if trace is None:
        return {}
    return {"traceparent": trace.traceparent, "tracestate": trace.state}


_current: ContextVar[TraceContext | None] = ContextVar("current_trace", default=None)


def current_trace() -> TraceContext | None:
    """The span this code runs in (set by ``traced``), if any."""
    return _current.get()


def client_call(
    name: str, call: Callable[[dict[str, str]], Coroutine[Any, Any, T]]
) -> Coroutine[Any, Any, T]:
    """An outbound call made in a new child span of the current one: ``call`` gets the span's
    headers, and the span is exported when the call's coroutine ends (no span outside a trace).

    Built where the current span is set (a job's run), since the coroutine itself runs on the
    process loop, outside that context.
    """
    trace = _current.get()
    if trace is None:
        return call({})
    span = trace.child()
    return _timed(name, span, call(span.headers()))


async def _timed(name: str, span: TraceContext, call: Coroutine[Any, Any, T]) -> T:
    started = time.time_ns()
    failed = False
    try:
        return await call
    except BaseException:
        failed = True
        raise
    finally:
        export(name, span, started, kind="client", failed=failed)


def exporting() -> bool:
    """Whether spans are exported (core/otel.py): callers skip building attributes when not."""
    return otel.exporting()


def current_trace_id() -> str | None:
    """The trace id of the span this code runs in, for log lines; None outside any."""
    trace = _current.get()
    return trace.trace_id if trace is not None else None


def current_fields() -> dict[str, str]:
    """``record_fields`` of the current span: for a record made while running a job or event."""
    return record_fields(_current.get())


def enter(trace: TraceContext) -> None:
    """Make ``trace`` the current span for the rest of this asyncio task (one API request)."""
    _current.set(trace)


@contextmanager
def traced(
    trace: TraceContext,
    name: str = "",
    *,
    kind: str = "internal",
    attributes: dict[str, Any] | None = None,
) -> Iterator[TraceContext]:
    """Make ``trace`` the current span for the duration of a job run, delivery or event.

    With a ``name``, the span is exported when it ends (core/otel.py), if export is on.
    """
    token = _current.set(trace)
    started = time.time_ns()
    failed = False
    try:
        yield trace
    except BaseException:
        failed = True
        raise
    finally:
        _current.reset(token)
        if name:
            export(name, trace, started, kind=kind, attributes=attributes, failed=failed)


def export(
    name: str,
    trace: TraceContext,
    started_ns: int,
    *,
    kind: str = "internal",
    attributes: dict[str, Any] | None = None,
    failed: bool = False,
) -> None:
    """Export ``trace``'s span, begun at ``started_ns`` and ending now, if export is on."""
    ids = (trace.trace_id, trace.span_id, trace.parent_id, trace.flags)
    otel.record(name, ids, started_ns, kind=kind, attributes=attributes, failed=failed)
