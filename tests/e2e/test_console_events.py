"""Console events end to end: a signed webhook through a real `gateway api` process, routed by a
real webhooks worker (a job run by a default worker, forwards made by a callbacks worker to a
loopback receiver), then its page read as an operator's browser reads it; and markup planted in a
webhook's body and headers, shown by Debian's Chromium (Playwright) as text that never runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.embedded import free_port
from tests.conftest import API_KEY, AUTH, Processes, api_ready, process_env, wait_for
from tests.e2e.receiver import Receiver

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.e2e
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (.ci/run apt-installs it)",
)

SECRET = "e2e-console-events-secret"
XSS = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
SOURCES = """
[sources.gh]
scheme = "github"
secrets_env = ["E2E_CONSOLE_EVENTS_SECRET"]

[[sources.gh.routes]]
events = ["push"]
forward = ["{receiver}/flaky?fail=1", "{receiver}/gone"]
job = {{ kind = "echo", event_key = "message" }}
"""


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An API process with the gh source, webhooks, default and callbacks workers, a receiver."""
    url = f"{redis_server}/2"
    redis.Redis.from_url(url).flushdb()
    prefix = f"cev-{uuid.uuid4().hex[:6]}:"
    receiver = Receiver().start()
    tmp: Path = tmp_path_factory.mktemp("console-events")
    sources = tmp / "sources.toml"
    sources.write_text(SOURCES.format(receiver=receiver.url))
    procs = Processes(tmp)
    env = process_env(
        url,
        prefix,
        WEBHOOK_SOURCES_FILE=str(sources),
        E2E_CONSOLE_EVENTS_SECRET=SECRET,
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        RETRY_POLICIES=json.dumps({"callbacks": {"max_attempts": 3, "schedule": [0.3, 0.3]}}),
    )
    for queue in ("webhooks", "default", "callbacks"):
        procs.start(["worker", queue, "--concurrency", "2"], env)
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield {"base": base, "procs": procs, "receiver": receiver}
    finally:
        procs.stop()
        receiver.stop()


def send(stack: dict[str, Any], body: bytes, **extra: str) -> tuple[str, str]:
    """A signed GitHub-style push, as GitHub sends it; (event id, its signature header)."""
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": str(uuid.uuid4()),
        "x-hub-signature-256": signature,
        **extra,
    }
    answer = httpx.post(f"{stack['base']}/v1/webhooks/gh", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"]), signature


def settled(stack: dict[str, Any], event_id: str) -> dict[str, Any]:
    """The event's API view once it is routed, its job succeeded and its deliveries are final."""

    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = httpx.get(
            f"{stack['base']}/v1/events/{event_id}", headers=AUTH, timeout=10
        ).json()
        final = {d["status"] for d in view.get("deliveries", [])} <= {"delivered", "failed"}
        jobs_done = all(job["status"] == "succeeded" for job in view.get("jobs", []))
        ready = view["status"] == "routed" and len(view["deliveries"]) == 2 and view["jobs"]
        return view if ready and final and jobs_done else None

    try:
        return wait_for(done, timeout=40)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack['procs'].logs()}") from None


def sign_in(client: httpx.Client) -> None:
    """Open an admin console session on ``client`` through the sign-in form."""
    form = client.get("/console/sign-in").text
    token = re.search(r'name="signin_token" value="([^"]+)"', form)
    assert token, form
    answer = client.post("/console/sign-in", data={"key": API_KEY, "signin_token": token[1]})
    assert answer.url.path == "/console", answer.text


def cells(page: str, row: str) -> list[str]:
    """The text of each cell in the table row whose data-id is ``row``."""
    found = re.search(rf'<tr data-id="{re.escape(row)}">(.*?)</tr>', page, re.S)
    assert found, (row, page)
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", found[1], re.S)
    ]


def test_the_event_page_shows_routes_job_deliveries_and_masked_headers(
    stack: dict[str, Any],
) -> None:
    body = json.dumps({"ref": "refs/heads/main", "message": "deploy 42"}).encode()
    event_id, signature = send(stack, body, authorization="Bearer sender-credential-0042")
    view = settled(stack, event_id)
    [job] = view["jobs"]
    by_url = {d["url"].split("?")[0].rsplit("/", 1)[1]: d for d in view["deliveries"]}

    with httpx.Client(base_url=stack["base"], timeout=10, follow_redirects=True) as console:
        sign_in(console)
        listing = console.get("/console/events", params={"source": "gh", "status": "routed"})
        assert cells(listing.text, event_id)[2:5] == ["gh", "push", "routed"]
        page = console.get(f"/console/events/{event_id}").text

    assert '<span class="status status-routed" id="status">routed</span>' in page
    # the matched route, the job it started (linked to its page) and both forwards
    route = re.search(r'<tr data-route="1">(.*?)</tr>', page, re.S)
    assert route and f'href="/console/jobs/{job["id"]}"' in route[1]
    assert cells(page, job["id"]) == [job["id"], "echo", "succeeded"]
    flaky = cells(page, by_url["flaky"]["id"])
    assert flaky[2:4] == ["delivered", "2"]  # the first attempt got a 500: retried, delivered
    gone = cells(page, by_url["gone"]["id"])
    assert gone[2:5] == ["failed", "1", "410"]
    assert gone[5]  # its last error is shown
    assert "?***" in flaky[1]  # the query of a forward URL is not shown
    # the headers as received, credentials masked; the signature and the secret nowhere
    assert re.search(r'data-name="x-github-event">.*?<td class="value">push</td>', page)
    assert re.search(r'data-name="x-hub-signature-256">.*?<td class="value">\*\*\*</td>', page)
    assert re.search(r'data-name="authorization">.*?<td class="value">\*\*\*</td>', page)
    for secret in (SECRET, signature, signature.removeprefix("sha256="), "sender-credential-0042"):
        assert secret not in page
    assert json.loads(
        re.sub(r"&#34;", '"', re.search(r'<pre id="body">(.*?)</pre>', page, re.S)[1])
    ) == {
        "ref": "refs/heads/main",
        "message": "deploy 42",
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system: Playwright downloads no browser."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@needs_chromium
def test_markup_in_a_webhook_shows_as_text_and_never_runs(
    browser: Any, stack: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    body = json.dumps({"message": XSS, "ref": XSS}).encode()
    event_id, _ = send(stack, body, **{"x-planted": XSS})
    settled(stack, event_id)
    context = browser.new_context(base_url=stack["base"])
    page = context.new_page()
    page.set_default_timeout(20_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto("/console/sign-in")
        page.fill("#key", API_KEY)
        page.click("button[type=submit]")
        page.click("nav >> text=Events")
        row = page.locator(f'#events tr[data-id="{event_id}"]')
        expect(row).to_be_visible()
        row.locator("a").click()
        expect(page.locator("#status")).to_have_text("routed")
        assert json.loads(page.inner_text("#body")) == {"message": XSS, "ref": XSS}
        expect(page.locator('#headers tr[data-name="x-planted"] .value')).to_have_text(XSS)
        assert page.locator("main script, main img").count() == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
        # the job the event started carries the markup too
        page.locator("#jobs a").click()
        assert XSS in page.inner_text("#payload")
        assert page.locator("main script, main img").count() == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert dialogs == []
    finally:
        context.close()
