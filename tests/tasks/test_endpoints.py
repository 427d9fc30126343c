"""Endpoints as the workers read them: parsing the record, matching events, secrets in rotation."""

from __future__ import annotations

import json

from core.statuses import EndpointStatus
from tasks.endpoints import Endpoint, parse


def record(**fields: str) -> dict[bytes, bytes]:
    base = {
        "id": "ep_1",
        "url": "https://example.com/hook",
        "event_types": json.dumps(["invoice.*"]),
        "sources": "[]",
        "status": "enabled",
        "secret": "whsec_current",
    }
    base.update(fields)
    return {k.encode(): v.encode() for k, v in base.items()}


def test_parse_reads_the_stored_strings() -> None:
    endpoint = parse(
        record(rate_limit="5", max_in_flight="4", ordered="1", headers='{"X-Team": "billing"}')
    )
    assert endpoint.rate_limit == 5.0 and endpoint.max_in_flight == 4 and endpoint.ordered
    assert endpoint.headers == {"X-Team": "billing"}
    plain = parse(record())
    assert plain.rate_limit is None and plain.max_in_flight == 32 and not plain.ordered


def test_wants_matches_type_globs_and_sources_and_never_when_disabled() -> None:
    endpoint = parse(record(sources=json.dumps(["stripe", "jobs"])))
    assert endpoint.wants("invoice.paid", "stripe")
    assert not endpoint.wants("customer.created", "stripe")
    assert not endpoint.wants("invoice.paid", "github")
    assert parse(record()).wants("invoice.paid", "github")  # no sources: every source
    assert parse(record(status="paused")).wants("invoice.paid", "x")  # held, not dropped
    assert not parse(record(status="disabled")).wants("invoice.paid", "x")


def test_the_previous_secret_signs_only_during_its_grace() -> None:
    endpoint = parse(record(previous_secret="whsec_old", previous_until="1000"))
    assert endpoint.signing_secrets(now=999.0) == ["whsec_current", "whsec_old"]
    assert endpoint.signing_secrets(now=1000.0) == ["whsec_current"]
    assert Endpoint("e", "u", ("*",), (), EndpointStatus.ENABLED, "s").signing_secrets() == ["s"]
