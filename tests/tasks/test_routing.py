"""Webhook routing planned without Redis or Celery (tasks/routing.py): which routes an event
matches, what each starts, and the status the event ends in. The task carrying a plan out against
Redis and real workers is tested end to end in tests/e2e/test_webhooks.py."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any
from urllib.parse import urlencode

import pytest

from core.sources import LoadedSource, parse_sources
from handlers.outbound import OutboundPolicy
from tasks.routing import Failure, Forward, JobRequest, delivery_id, outcome, plan_event
from tests.conftest import ROOT

SOURCES = """
[sources.shop]
scheme = "stripe"
secrets_env = ["UNUSED"]

[[sources.shop.routes]]
events = ["invoice.*"]
forward = ["https://a.example/hook", "https://b.example/hook"]

[[sources.shop.routes]]
events = ["customer.created"]
forward = ["https://c.example/hook"]

[[sources.shop.routes]]
events = ["*"]
[sources.shop.routes.job]
kind = "echo"
payload = { sleep_ms = 5 }
event_key = "message"
callback_url = "https://cb.example/x"

[[sources.shop.routes]]
events = ["invoice.paid", "invoice.voided"]
forward = ["https://d.example/hook"]
job = { kind = "echo" }

[sources.gh]
scheme = "github"
secrets_env = ["UNUSED"]

[[sources.gh.routes]]
events = ["push"]
forward = ["https://e.example/hook"]
"""


def sources() -> dict[str, LoadedSource]:
    return parse_sources(tomllib.loads(SOURCES), OutboundPolicy(), {}, with_secrets=False)


def event(type_: str | None, body: Any = None, **fields: Any) -> dict[str, Any]:
    """An event as tasks.events.decode gives it back from its record."""
    document = {"type": type_, "id": "evt_1"} if body is None else body
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return {
        "id": "ev-1",
        "source": "shop",
        "type": type_,
        "body": raw,
        "content_type": "application/json",
        "received_at": "2026-01-02T03:04:05Z",
        **fields,
    }


@pytest.mark.parametrize(
    ("type_", "numbers"),
    [
        ("invoice.paid", [1, 3, 4]),
        ("invoice.payment.failed", [1, 3]),  # * crosses dots
        ("Invoice.paid", [3]),  # case-sensitive
        ("customer.created", [2, 3]),
        ("anything.else", [3]),
    ],
)
def test_every_route_whose_glob_matches_in_file_order(type_: str, numbers: list[int]) -> None:
    plan = plan_event(event(type_), sources()["shop"])
    assert plan.status == "routed"
    assert [route.number for route in plan.routes] == numbers


def test_no_matching_route_is_ignored_without_reading_the_body() -> None:
    plan = plan_event(event("ping", body=b"not json", source="gh"), sources()["gh"])
    assert (plan.status, plan.reason, plan.error) == (
        "ignored",
        "no route matches this event type",
        None,
    )
    assert plan.routes == () and plan.forwards == [] and plan.jobs == []


def test_a_source_no_longer_configured_fails() -> None:
    plan = plan_event(event("push"), None)
    assert plan.status == "failed"
    assert plan.error == Failure("unknown_source", "source no longer configured")
    assert plan.forwards == [] and plan.jobs == []


def test_fan_out_forwards_and_jobs_in_route_order() -> None:
    plan = plan_event(event("invoice.paid"), sources()["shop"])
    assert [(f.url, f.delivery_id) for f in plan.forwards] == [
        ("https://a.example/hook", delivery_id("ev-1", 0, "https://a.example/hook")),
        ("https://b.example/hook", delivery_id("ev-1", 0, "https://b.example/hook")),
        ("https://d.example/hook", delivery_id("ev-1", 3, "https://d.example/hook")),
    ]
    assert [job.idempotency_key for job in plan.jobs] == ["event:ev-1:2", "event:ev-1:3"]
    assert len({f.delivery_id for f in plan.forwards}) == 3
    assert all(f.delivery_id.startswith("msg_") for f in plan.forwards)
    assert plan.parent == "event:ev-1" and plan.owner == "webhook:shop"


def test_the_same_event_plans_the_same_ids_every_time() -> None:
    first = plan_event(event("invoice.paid"), sources()["shop"])
    again = plan_event(event("invoice.paid"), sources()["shop"])
    assert first == again
    other = plan_event(event("invoice.paid", id="ev-2"), sources()["shop"])
    assert {f.delivery_id for f in first.forwards}.isdisjoint(f.delivery_id for f in other.forwards)


def test_a_job_payload_is_its_template_plus_the_event_under_event_key() -> None:
    document = {"type": "invoice.paid", "id": "evt_9", "data": {"amount": 5}}
    plan = plan_event(event("invoice.paid", body=document), sources()["shop"])
    assert plan.jobs == [
        JobRequest(
            kind="echo",
            payload={"sleep_ms": 5, "message": document},
            owner="webhook:shop",
            callback_url="https://cb.example/x",
            idempotency_key="event:ev-1:2",
        ),
        JobRequest(
            kind="echo",
            payload={},
            owner="webhook:shop",
            callback_url=None,
            idempotency_key="event:ev-1:3",
        ),
    ]


def test_forwards_deliver_the_event_wrapped_with_where_it_came_from() -> None:
    document = {"type": "customer.created", "id": "evt_3"}
    plan = plan_event(event("customer.created", body=document), sources()["shop"])
    assert plan.forwards == [
        Forward(delivery_id("ev-1", 1, "https://c.example/hook"), "https://c.example/hook")
    ]
    assert plan.body == {
        "type": "customer.created",
        "timestamp": "2026-01-02T03:04:05Z",
        "source": "shop",
        "event_id": "ev-1",
        "data": document,
    }


def test_a_form_encoded_event_is_read_from_its_payload_field() -> None:
    document = {"ref": "refs/heads/main", "commits": []}
    form = urlencode({"payload": json.dumps(document)}).encode()
    record = event("push", body=form, source="gh", content_type="application/x-www-form-urlencoded")
    plan = plan_event(record, sources()["gh"])
    assert plan.status == "routed"
    assert plan.body is not None and plan.body["data"] == document


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        (b"{not json", "application/json", "the event is not valid JSON"),
        (b"other=1", "application/x-www-form-urlencoded", "the form body has no single payload"),
        (b"payload=\xff", "application/x-www-form-urlencoded", "not valid url-encoded UTF-8"),
    ],
)
def test_an_unreadable_body_fails_the_event(body: bytes, content_type: str, detail: str) -> None:
    record = event("push", body=body, source="gh", content_type=content_type)
    plan = plan_event(record, sources()["gh"])
    assert plan.status == "failed" and plan.error is not None
    assert plan.error.code == "invalid_json"
    assert detail in plan.error.detail
    assert plan.forwards == [] and plan.jobs == []


def test_outcome_routed_when_every_job_was_taken() -> None:
    plan = plan_event(event("invoice.paid"), sources()["shop"])
    result = outcome(plan, ["job-a", "job-b"])
    assert result.status == "routed" and result.error is None
    assert [(r.number, r.job, r.error) for r in result.routes] == [
        (1, None, None),
        (3, "job-a", None),
        (4, "job-b", None),
    ]
    assert result.routes[0].deliveries == [f.delivery_id for f in plan.forwards[:2]]
    assert result.routes[1].deliveries == []
    assert result.routes[2].events == ["invoice.paid", "invoice.voided"]


def test_outcome_fails_the_event_when_a_route_s_job_was_refused() -> None:
    plan = plan_event(event("invoice.paid"), sources()["shop"])
    refused = Failure("job_refused", "sleep_ms: Input should be a valid integer")
    result = outcome(plan, [refused, "job-b"])
    assert result.status == "failed"
    assert result.error == Failure("route_failed", "1 route(s) failed")
    assert [(r.job, r.error) for r in result.routes] == [
        (None, None),
        (None, refused),
        ("job-b", None),
    ]


def test_planning_needs_neither_redis_nor_celery() -> None:
    code = (
        "import sys, tasks.routing\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'redis', 'celery', 'kombu', 'gateway', 'fastapi'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
