"""The sources file (core/sources.py): the shipped example loads, and every mistake stops startup
with a message that names the source and field and never a secret. The gateway's own start-up
refusals are in tests/gateway/test_webhooks_sources.py."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.destinations import check_destinations
from core.sources import SourcesError, load_sources, parse_sources
from handlers.outbound import OutboundPolicy

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


def test_a_missing_secret_variable_is_refused() -> None:
    refused(
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1", "NOT_SET_ANYWHERE"]\n',
        "'a'",
        "NOT_SET_ANYWHERE not set",
    )


def test_secrets_are_read_in_the_order_named() -> None:
    toml = '[sources.a]\nscheme = "github"\nsecrets_env = ["S2", "S1"]\n'
    loaded = parse(toml, env={"S1": "secret-value-one", "S2": "secret-value-two"})["a"]
    assert loaded.secrets == ("secret-value-two", "secret-value-one")
    assert "secret-value" not in repr(loaded)


def test_a_missing_file_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(SourcesError, match="WEBHOOK_SOURCES_FILE"):
        load_sources(tmp_path / "absent.toml", POLICY, ENV)


def test_workers_load_routes_without_secrets() -> None:
    toml = '[sources.a]\nscheme = "github"\nsecrets_env = ["UNSET_IN_WORKER"]\n'
    sources = parse_sources(tomllib.loads(toml), POLICY, {}, with_secrets=False)
    assert "a" in sources
    assert sources["a"].secrets == ()


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


def test_a_destination_at_a_blocked_address_is_refused_by_the_resolving_check() -> None:
    """The loader checks a URL's shape only; the API's start-up check resolves it."""
    toml = (
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
        '[[sources.a.routes]]\nevents = ["push"]\nforward = ["https://10.1.2.3/hook"]\n'
        '[[sources.a.routes]]\nevents = ["*"]\n'
        'job = { kind = "echo", callback_url = "https://127.0.0.1/cb" }'
    )
    sources = parse(toml)
    with pytest.raises(SourcesError, match=r"'a': https://10\.1\.2\.3/hook refused \(url_blocked"):
        asyncio.run(check_destinations(sources, POLICY))
    callback_only = parse(toml.replace("https://10.1.2.3/hook", "https://93.184.215.14/hook"))
    with pytest.raises(SourcesError, match=r"127\.0\.0\.1/cb refused \(url_blocked"):
        asyncio.run(check_destinations(callback_only, POLICY))


def test_an_allowlisted_internal_destination_is_accepted() -> None:
    toml = (
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
        '[[sources.a.routes]]\nevents = ["push"]\nforward = ["http://10.1.2.3/hook"]'
    )
    assert parse(toml, allow_http=True, allow_networks=["10.0.0.0/8"])
