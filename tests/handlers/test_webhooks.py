"""handlers/webhooks: reading an event and its type, matching type patterns, job templates."""

from __future__ import annotations

import pytest

from handlers.webhooks import (
    EventUnreadable,
    event_document,
    event_type_at,
    job_payload,
    matches,
    matching_routes,
    media_type,
)


@pytest.mark.parametrize(
    ("event_type", "patterns", "expected"),
    [
        ("push", ["push"], True),
        ("pushed", ["push"], False),
        ("invoice.paid", ["invoice.*"], True),
        ("invoice.payment.failed", ["invoice.*"], True),  # * crosses dots
        ("invoices.paid", ["invoice.*"], False),
        ("Invoice.paid", ["invoice.*"], False),  # case-sensitive
        ("anything", ["*"], True),
        ("customer.created", ["invoice.*", "customer.?reated"], True),
        ("x", [], False),
    ],
)
def test_type_patterns(event_type: str, patterns: list[str], expected: bool) -> None:
    assert matches(event_type, patterns) is expected


def test_every_matching_route_in_order() -> None:
    routes = [["invoice.*"], ["push"], ["*"], ["invoice.paid"]]
    assert matching_routes("invoice.paid", routes) == [0, 2, 3]
    assert matching_routes("push", routes) == [1, 2]
    assert matching_routes("ping", [["push"]]) == []


def test_reading_the_event_and_its_type() -> None:
    document = event_document(b'{"type":"a.b","event":{"name":"n"}}', "application/json")
    assert event_type_at(document, "type") == "a.b"
    assert event_type_at(document, "event.name") == "n"
    assert event_type_at(document, "event.missing") is None
    assert event_type_at({"type": 3}, "type") is None
    assert event_type_at(["list"], "type") is None
    form = b"payload=%7B%22type%22%3A%22push%22%7D"
    assert event_document(form, "application/x-www-form-urlencoded") == {"type": "push"}
    with pytest.raises(EventUnreadable):
        event_document(b"{", "application/json")
    with pytest.raises(EventUnreadable):
        event_document(b"other=1", "application/x-www-form-urlencoded")
    assert media_type("Application/JSON; charset=utf-8") == "application/json"


def test_job_payload_puts_the_event_under_its_key() -> None:
    assert job_payload({"a": 1}, "message", {"type": "x"}) == {"a": 1, "message": {"type": "x"}}
    assert job_payload({"a": 1}, None, {"type": "x"}) == {"a": 1}
