"""The sources file: the shipped example loads, and every mistake stops startup with a message
that names the source and field and never a secret. Plus the pure routing it feeds
(handlers/webhooks)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.main import create_app
from gateway.webhooks.sources import SourcesError, load_sources, parse_sources
from handlers.outbound import OutboundPolicy
from handlers.webhooks import (
    EventUnreadable,
    event_document,
    event_type_at,
    job_payload,
    matches,
    matching_routes,
    media_type,
)
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {
    "GITHUB_WEBHOOK_SECRET": "gh-secret-value-1",
    "GITHUB_WEBHOOK_SECRET_OLD": "gh-secret-value-0",
    "STRIPE_WEBHOOK_SECRET": "whsec_stripe_value",
    "PARTNER_WEBHOOK_SECRET": "whsec_cGFydG5lci1zZWNyZXQtdmFsdWU=",
    "ACME_WEBHOOK_SECRET": "acme-secret-value",
}
POLICY = OutboundPolicy()
ENV = {"S1": "secret-value-one"}


def parse(toml: str, env: dict[str, str] | None = None, **policy: Any) -> dict[str, Any]:
    return parse_sources(tomllib.loads(toml), OutboundPolicy(**policy), ENV if env is None else env)


def refused(toml: str, *fragments: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SourcesError) as info:
        parse(toml, env)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "secret-value-one" not in message
    return message


def test_the_shipped_example_loads() -> None:
    sources = load_sources(ROOT / "webhooks.example.toml", POLICY, EXAMPLE_ENV)
    assert set(sources) == {"github", "stripe", "partner", "acme"}
    github = sources["github"].config
    assert github.type_header == "x-github-event"
    assert github.accepts("application/x-www-form-urlencoded")
    assert not sources["stripe"].config.accepts("application/x-www-form-urlencoded")
    assert sources["acme"].config.type_path == "event.name"
    assert sources["stripe"].config.routes[1].job is not None


def test_a_missing_secret_variable_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[sources.a]\nscheme = "github"\nsecrets_env = ["S1", "NOT_SET_ANYWHERE"]\n')
    with pytest.raises(SourcesError, match="NOT_SET_ANYWHERE not set"):
        create_app(make_settings("redis://127.0.0.1:1/0", "x:", webhook_sources_file=path))


def test_a_missing_file_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(SourcesError, match="WEBHOOK_SOURCES_FILE"):
        load_sources(tmp_path / "absent.toml", POLICY, ENV)


def test_workers_load_routes_without_secrets() -> None:
    toml = '[sources.a]\nscheme = "github"\nsecrets_env = ["UNSET_IN_WORKER"]\n'
    sources = parse_sources(tomllib.loads(toml), POLICY, {}, with_secrets=False)
    assert "a" in sources


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[sources.a]\nscheme = "md5"\nsecrets_env = ["S1"]', ("'a'", "scheme")),
        ('[sources.a]\nscheme = "github"\nsecrets_env = []', ("secrets_env",)),
        (
            '[sources.a]\nscheme = "github"\nsecret = "inline"\nsecrets_env = ["S1"]',
            ("secret", "Extra inputs"),
        ),
        ('[sources.a]\nscheme = "hmac"\nsecrets_env = ["S1"]', ("needs header",)),
        (
            '[sources.a]\nscheme = "hmac"\nheader = "X-S"\ntolerance = 60\nsecrets_env = ["S1"]',
            ("timestamp_header",),
        ),
        (
            '[sources.a]\nscheme = "stripe"\nheader = "X-S"\nsecrets_env = ["S1"]',
            ("header: only for scheme hmac",),
        ),
        ('[sources.a]\nscheme = "github"\ntolerance = 10\nsecrets_env = ["S1"]', ("tolerance",)),
        ('[sources."a b"]\nscheme = "github"\nsecrets_env = ["S1"]', ("name",)),
        ('[source.a]\nscheme = "github"', ("unknown top-level key",)),
        (
            '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
            '[[sources.a.routes]]\nevents = ["push"]',
            ("forward URLs, a job, or both",),
        ),
        (
            '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
            '[[sources.a.routes]]\nevents = ["push"]\njob = { kind = "nope" }',
            ("route 1", "unknown job kind 'nope'"),
        ),
        (
            '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
            '[[sources.a.routes]]\nevents = ["push"]\n'
            'job = { kind = "echo", payload = { sleep_ms = "soon" } }',
            ("route 1", "job payload sleep_ms"),
        ),
        (
            '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
            '[[sources.a.routes]]\nevents = ["push"]\nforward = ["http://example.com/x"]',
            ("route 1", "url_scheme_not_allowed"),
        ),
        (
            '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
            '[[sources.a.routes]]\nevents = ["push"]\nforward = ["ftp://example.com/x"]',
            ("url_scheme_not_allowed",),
        ),
    ],
)
def test_mistakes_are_refused_with_where_and_why(toml: str, fragments: tuple[str, ...]) -> None:
    refused(toml, *fragments)


def test_a_standard_secret_that_is_not_base64_is_refused_without_quoting_it() -> None:
    message = refused(
        '[sources.a]\nscheme = "standard"\nsecrets_env = ["S1"]',
        "'a'",
        "base64",
        env={"S1": "whsec_secret-value-one!!"},
    )
    assert "secret-value-one" not in message


def test_a_job_template_may_leave_the_event_key_to_the_event() -> None:
    toml = (
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
        '[[sources.a.routes]]\nevents = ["push"]\njob = { kind = "echo", event_key = "message" }'
    )
    route = parse(toml)["a"].config.routes[0]
    assert route.job.event_key == "message"


def test_a_forward_to_a_blocked_address_stops_startup(tmp_path: Path) -> None:
    """Checked with the outbound guard's rules when the app starts (and again on every connect)."""
    path = tmp_path / "s.toml"
    path.write_text(
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
        '[[sources.a.routes]]\nevents = ["push"]\nforward = ["https://10.1.2.3/hook"]\n'
    )
    settings = make_settings("redis://127.0.0.1:1/0", "x:", webhook_sources_file=path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S1", "secret-value-one")
        app = create_app(settings)
        with pytest.raises(SourcesError, match="url_blocked_address"), TestClient(app):
            pass


def test_an_allowlisted_internal_destination_is_accepted() -> None:
    toml = (
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
        '[[sources.a.routes]]\nevents = ["push"]\nforward = ["http://10.1.2.3/hook"]'
    )
    assert parse(toml, allow_http=True, allow_networks=["10.0.0.0/8"])


# --- handlers/webhooks: pure routing -------------------------------------------------------


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
