"""W3C trace context parsing and minting (core/tracing.py), edge cases from the spec."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from core import tracing
from core.tracing import (
    MAX_TRACESTATE,
    TraceContext,
    clean_tracestate,
    current_trace_id,
    from_record,
    ingest,
    parse_traceparent,
    traced,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def test_a_valid_traceparent_gives_its_ids() -> None:
    assert parse_traceparent(VALID) == (TRACE, PARENT, "01")
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == (TRACE, PARENT, "00")
    assert parse_traceparent(f" {VALID}\t") == (TRACE, PARENT, "01")  # optional whitespace


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"00-{TRACE.upper()}-{PARENT}-01",  # the spec's ids are lowercase hex only
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-{PARENT}-0",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}x-{PARENT}-01",
        f"00_{TRACE}_{PARENT}_01",
        f"0-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}",
        "garbage",
        f"cc-{TRACE}-{PARENT}-01extra",  # a later version's extra fields start with '-'
    ],
)
def test_a_malformed_traceparent_is_refused(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_as_00_and_its_extra_fields_ignored() -> None:
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future-holds") == (
        TRACE,
        PARENT,
        "01",
    )
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01") == (TRACE, PARENT, "01")


def test_ingest_continues_a_valid_trace_with_a_new_span() -> None:
    trace = ingest(VALID, "vendor=abc")
    assert (trace.trace_id, trace.parent_id, trace.flags, trace.state) == (
        TRACE,
        PARENT,
        "01",
        "vendor=abc",
    )
    assert trace.span_id != PARENT and re.fullmatch(r"[0-9a-f]{16}", trace.span_id)
    assert trace.traceparent == f"00-{TRACE}-{trace.span_id}-01"


def test_ingest_starts_a_trace_for_a_bad_header_and_drops_its_tracestate() -> None:
    trace = ingest(f"00-{'0' * 32}-{PARENT}-01", "vendor=abc")
    assert trace.trace_id != "0" * 32 and TRACEPARENT.fullmatch(trace.traceparent)
    assert trace.state == "" and trace.parent_id == ""
    assert ingest(None).trace_id != ingest(None).trace_id


def test_a_later_version_is_passed_on_as_00() -> None:
    trace = ingest(f"cc-{TRACE}-{PARENT}-01-more")
    assert trace.traceparent.startswith(f"00-{TRACE}-")


def test_a_child_keeps_trace_flags_and_state_with_a_new_span() -> None:
    parent = TraceContext(TRACE, PARENT, "00", "a=1")
    child = parent.child()
    assert (child.trace_id, child.flags, child.state, child.parent_id) == (
        TRACE,
        "00",
        "a=1",
        PARENT,
    )
    assert child.span_id != PARENT
    assert child.headers() == {"traceparent": f"00-{TRACE}-{child.span_id}-00", "tracestate": "a=1"}
    assert TraceContext(TRACE, PARENT).headers() == {"traceparent": f"00-{TRACE}-{PARENT}-01"}


def test_a_run_of_a_record_is_a_child_of_the_recorded_span() -> None:
    run = from_record({"traceparent": VALID, "tracestate": "a=1"})
    assert (run.trace_id, run.parent_id, run.state) == (TRACE, PARENT, "a=1")
    assert run.span_id != PARENT
    # a record from before trace context was kept still gets a (new) trace
    assert TRACEPARENT.fullmatch(from_record({}).traceparent)


def test_tracestate_is_kept_as_given_up_to_the_bound() -> None:
    assert clean_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == (
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert clean_tracestate(None) == "" and clean_tracestate("") == ""
    assert clean_tracestate("a=1\x00") == ""  # not a value the spec allows


def test_a_too_long_tracestate_is_cut_at_a_member_boundary_big_members_first() -> None:
    big = "big=" + "x" * 200
    members = [f"v{i:02d}=" + "y" * 20 for i in range(40)]  # 24 characters, 25 with a comma
    value = ",".join([members[0], big, *members[1:]])
    kept = clean_tracestate(value)
    assert len(kept) <= MAX_TRACESTATE
    assert big not in kept
    parts = kept.split(",")
    assert parts == members[: len(parts)] and len(parts) == (MAX_TRACESTATE + 1) // 25


def test_ids_are_valid_and_distinct() -> None:
    spans = {tracing.new_span_id() for _ in range(1000)}
    traces = {tracing.new_trace_id() for _ in range(1000)}
    assert len(spans) == len(traces) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) and s != "0" * 16 for s in spans)
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) and t != "0" * 32 for t in traces)


def test_a_forked_child_mints_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, tracing.new_trace_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != tracing.new_trace_id()


def test_the_current_trace_is_set_for_the_block_only() -> None:
    assert current_trace_id() is None
    with traced(TraceContext(TRACE, PARENT)):
        assert current_trace_id() == TRACE
    assert current_trace_id() is None


def test_a_client_call_gets_a_child_spans_headers_inside_a_trace_and_none_outside() -> None:
    seen: list[dict[str, str]] = []

    async def call(headers: dict[str, str]) -> str:
        seen.append(headers)
        return "done"

    assert asyncio.run(tracing.client_call("out", call)) == "done"
    with traced(TraceContext(TRACE, PARENT, "01", "a=1")):
        coroutine = tracing.client_call("out", call)
    assert asyncio.run(coroutine) == "done"  # awaited outside the span, as on the process loop
    outside, inside = seen
    assert outside == {}
    trace_id, span_id, _ = ids_of(inside["traceparent"])
    assert (trace_id, inside["tracestate"]) == (TRACE, "a=1") and span_id != PARENT


def ids_of(traceparent: str) -> tuple[str, str, str]:
    parsed = parse_traceparent(traceparent)
    assert parsed is not None
    return parsed
