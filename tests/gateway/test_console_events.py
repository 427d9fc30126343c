"""Console events pages in-process on real Redis: the listing's filters and paging, and an event's
page with its headers masked (no signature, credential or secret reaches the HTML) and its body
escaped. tests/e2e/test_console_events.py drives the same pages with real workers and a browser.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from markupsafe import escape

from gateway.console import events as console_events
from gateway.console.web import CSP
from gateway.main import create_app
from tasks.keys import Keys
from tests.conftest import API_KEY, make_settings
from tests.gateway.test_console_security import sign_in

SECRET = "console-events-inbound-secret"
ACME_SECRET = "console-events-acme-secret"
SOURCES = """
[sources.gh]
scheme = "github"
secrets_env = ["CONSOLE_EVENTS_SECRET"]

[sources.acme]
scheme = "hmac"
secrets_env = ["CONSOLE_EVENTS_ACME"]
header = "X-Acme-Check"
event_type_path = "kind"
"""
XSS = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"


@pytest.fixture
def console(quiet_redis_url: str, prefix: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app with two sources, signed in as an admin, on the quiet database."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    settings = make_settings(quiet_redis_url, prefix, webhook_sources_file=path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONSOLE_EVENTS_SECRET", SECRET)
        mp.setenv("CONSOLE_EVENTS_ACME", ACME_SECRET)
        app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert sign_in(client, API_KEY)[0] == 303
        yield client


def send_gh(client: TestClient, kind: str, body: bytes, **extra: str) -> str:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/json",
        "x-github-event": kind,
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": f"sha256={signature}",
        **extra,
    }
    answer = client.post("/v1/webhooks/gh", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_the_listing_filters_and_pages_by_cursor(
    console: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushes = [send_gh(console, "push", b'{"n": %d}' % i) for i in range(3)]
    issue = send_gh(console, "issues", b'{"n": 9}')
    page = console.get("/console/events")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert 'href="/console/events" aria-current="page"' in page.text
    rows = re.findall(r'<tr data-id="([^"]+)">', page.text)
    assert rows == [issue, *reversed(pushes)]

    only = console.get("/console/events", params={"type": "push", "source": "gh"})
    assert re.findall(r'<tr data-id="([^"]+)">', only.text) == list(reversed(pushes))
    failed = console.get("/console/events", params={"status": "failed"})
    assert 'id="empty"' in failed.text

    # page by page through the "older" link, as a person clicks it
    monkeypatch.setattr(console_events, "PAGE_SIZE", 2)
    seen: list[str] = []
    url: str | None = "/console/events?type=push"
    while url:
        answer = console.get(url)
        seen += re.findall(r'<tr data-id="([^"]+)">', answer.text)
        found = re.search(r'id="older" href="([^"]+)"', answer.text)
        url = html.unescape(found.group(1)) if found else None
    assert seen == list(reversed(pushes))

    for bad in ({"status": "nope"}, {"source": "nope"}, {"cursor": "x"}):
        assert console.get("/console/events", params=bad).status_code == 400


def test_the_event_page_masks_credentials_and_escapes_the_body(
    console: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    body = json.dumps({"action": XSS, "note": f"has {SECRET} inside"}).encode()
    event_id = send_gh(
        console,
        "push",
        body,
        authorization="Bearer sender-credential-123456",
        cookie="session=sender-cookie-123456",
        **{"x-debug": f"echo {SECRET}", "x-note": XSS},
    )
    stored = quiet_redis.hget(Keys(prefix).event(event_id), "headers")
    assert stored is not None and SECRET.encode() not in stored  # masked before it is stored
    page = console.get(f"/console/events/{event_id}")
    assert page.status_code == 200
    text = page.text
    for secret in (SECRET, "sender-credential-123456", "sender-cookie-123456"):
        assert secret not in text
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature not in text
    assert '<tr data-name="x-hub-signature-256"><td><code>x-hub-signature-256</code></td>' in text
    assert re.search(r'data-name="authorization">.*?<td class="value">\*\*\*</td>', text)
    assert re.search(r'data-name="x-debug">.*?<td class="value">echo \*\*\*</td>', text)
    assert re.search(r'data-name="x-github-event">.*?<td class="value">push</td>', text)
    # markup in a header and in the body arrives as text
    assert XSS not in text and "<img" not in text
    assert text.count(str(escape(XSS))) == 2  # the header's value and the body's string
    assert '"action": "' in html.unescape(text)  # indented JSON
    assert page.headers["content-security-policy"] == CSP


def test_a_configured_signature_header_is_masked_by_its_name(console: TestClient) -> None:
    body = b'{"kind": "order.created"}'
    mac = hmac.new(ACME_SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = console.post(
        "/v1/webhooks/acme",
        content=body,
        headers={"content-type": "application/json", "x-acme-check": mac},
    )
    assert answer.status_code == 202, answer.text
    page = console.get(f"/console/events/{answer.json()['id']}")
    assert mac not in page.text and ACME_SECRET not in page.text
    assert re.search(r'data-name="x-acme-check">.*?<td class="value">\*\*\*</td>', page.text)


def test_an_unknown_event_is_a_page_and_pages_need_a_session(console: TestClient) -> None:
    missing = console.get("/console/events/no-such-event")
    assert missing.status_code == 404 and "No event no-such-event" in missing.text
    console.cookies.clear()
    for path in ("/console/events", "/console/events/anything"):
        answer = console.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"


def test_an_event_recorded_without_headers_says_so(
    console: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    event_id = send_gh(console, "push", b'{"old": true}')
    quiet_redis.hdel(Keys(prefix).event(event_id), "headers")
    page = console.get(f"/console/events/{event_id}")
    assert 'id="no-headers"' in page.text


def test_a_page_that_hit_the_scan_bound_says_so_and_continues(
    console: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rare = send_gh(console, "issues", b'{"rare": true}')
    for i in range(5):
        send_gh(console, "push", b'{"n": %d}' % i)
    monkeypatch.setattr(console_events, "MAX_SCAN", 2)
    url: str | None = "/console/events?type=issues"
    found: list[str] = []
    bounded = 0
    while url:
        answer = console.get(url)
        found += re.findall(r'<tr data-id="([^"]+)">', answer.text)
        more = re.search(r'id="continue" href="([^"]+)"', answer.text)
        bounded += bool(more)
        url = html.unescape(more.group(1)) if more else None
        if more:
            assert "Looked at 2 events" in answer.text
    assert found == [rare] and bounded >= 2
