"""The console in a real browser: Debian's Chromium, headless, driven by Playwright, against a real
`gateway api` process and real workers on a database of their own.

Set CONSOLE_SCREENSHOTS_DIR=docs to refresh docs/console-overview.png and docs/console-job.png.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.embedded import free_port
from tasks.keys import Keys
from tests.conftest import API_KEY, AUTH, PLAIN_KEY, Processes, api_ready, process_env, wait_for
from tests.e2e.receiver import Receiver

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (.ci/run apt-installs it)",
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")

ADMIN_KEY = API_KEY  # the suite's admin key; PLAIN_KEY only submits jobs
XSS = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS_DIR")


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An API process with an admin key, default and callbacks workers, a callback receiver."""
    url = f"{redis_server}/13"
    redis.Redis.from_url(url).flushdb()
    prefix = f"console-{uuid.uuid4().hex[:6]}:"
    receiver = Receiver().start()
    procs = Processes(tmp_path_factory.mktemp("console"))
    env = process_env(
        url,
        prefix,
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        RETRY_POLICIES=json.dumps({"callbacks": {"max_attempts": 3, "schedule": [0.5, 0.5]}}),
    )
    procs.start(["worker", "default", "--concurrency", "2"], env)
    procs.start(["worker", "callbacks", "--concurrency", "2"], env)
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield {"base": base, "url": url, "prefix": prefix, "procs": procs, "receiver": receiver}
    finally:
        procs.stop()
        receiver.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system: Playwright downloads no browser."""
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, stack: dict[str, Any]) -> Iterator[Any]:
    """A fresh browser context (no cookies) on the console."""
    context = browser.new_context(base_url=stack["base"], viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    yield tab
    context.close()


def sign_in(page: Any, key: str) -> None:
    """Fill the sign-in form as a person would."""
    page.goto("/console/sign-in")
    page.fill("#key", key)
    page.click("button[type=submit]")


def submit(stack: dict[str, Any], body: dict[str, Any]) -> str:
    """An echo job through the API, as a service would send it."""
    answer = httpx.post(f"{stack['base']}/v1/jobs/echo", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_status(stack: dict[str, Any], job_id: str, status: str) -> dict[str, Any]:
    """Poll the job's API view until it says ``status``."""

    def reached() -> dict[str, Any] | None:
        view = httpx.get(f"{stack['base']}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()
        return view if view["status"] == status else None

    try:
        return wait_for(reached, timeout=30)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack['procs'].logs()}") from None


def shoot(page: Any, name: str) -> None:
    """Save a screenshot for the README when asked to."""
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def test_an_admin_signs_in_and_the_overview_updates_live(page: Any, stack: dict[str, Any]) -> None:
    page.goto("/console")
    assert page.url.endswith("/console/sign-in")

    sign_in(page, PLAIN_KEY)  # a submit-only key
    playwright_api.expect(page.locator("#message")).to_contain_text("not an admin key")
    assert page.url.endswith("/console/sign-in")

    sign_in(page, ADMIN_KEY)
    assert page.url.endswith("/console")
    rows = page.locator("#queues tbody tr")
    assert rows.count() >= 6
    default = page.locator('tr[data-queue="default"]')
    playwright_api.expect(page.locator("#live")).to_have_text("live")
    playwright_api.expect(default.locator('[data-field="workers_alive"]')).to_have_text("1")

    playwright_api.expect(default.locator('[data-field="in_flight"]')).to_have_text(
        re.compile(r"^\d+$")
    )
    chart = page.locator("#activity-chart")
    playwright_api.expect(chart.locator("polyline")).to_have_count(4)
    line = chart.locator('polyline[data-series="accepted"]')
    points = line.get_attribute("points")

    before = int(page.inner_text("#scheduled"))
    accepted = int(page.inner_text("#total-accepted"))
    page.evaluate("window.__same_page = 1")
    submit(stack, {"message": "later", "delay_seconds": 3600})
    submit(stack, {"message": "later too", "delay_seconds": 3600})
    playwright_api.expect(page.locator("#scheduled")).to_have_text(str(before + 2))
    # the chart counts them as accepted this minute, redrawn from the same stream
    playwright_api.expect(page.locator("#total-accepted")).to_have_text(str(accepted + 2))
    playwright_api.expect(line).not_to_have_attribute("points", points or "")
    assert page.evaluate("window.__same_page") == 1  # updated in place, not reloaded


def test_a_dead_letter_is_replayed_by_clicking(page: Any, stack: dict[str, Any]) -> None:
    # one after the other: dead letters are ordered by when they died, and two workers' slots
    # could finish them in either order
    first = submit(stack, {"message": "boom", "fail_permanently": True})
    wait_status(stack, first, "failed")
    second = submit(stack, {"message": "boom too", "fail_permanently": True})
    wait_status(stack, second, "failed")
    sign_in(page, ADMIN_KEY)
    page.click("text=Dead letters")
    rows = page.locator("#dead-letters tbody tr")
    # newest first
    ids = [rows.nth(i).get_attribute("data-id") for i in range(rows.count())]
    assert ids.index(f"job:{second}") < ids.index(f"job:{first}")

    page.select_option("#kind", "callback")
    page.click("text=Filter")
    playwright_api.expect(page.locator("#empty")).to_be_visible()
    page.select_option("#kind", "echo")
    page.click("text=Filter")

    page.locator(f'tr[data-id="job:{first}"] >> text=Replay').click()
    outcome = page.locator(f'#outcomes tr[data-id="job:{first}"] .outcome')
    playwright_api.expect(outcome).to_have_text("queued")
    # it runs again (and fails again, as asked): a real worker took the replay
    wait_for(lambda: int(wait_status(stack, first, "failed")["attempts"]) == 2, timeout=30)

    # a selection: confirmed on a page of its own, then each one's result
    page.goto("/console/dead-letters")
    for job_id in (first, second):
        page.check(f'tr[data-id="job:{job_id}"] input[type=checkbox]')
    page.click("#replay-selected")
    playwright_api.expect(page.locator("#to-replay li")).to_have_count(2)
    page.click("#confirm")
    for job_id in (first, second):
        cell = page.locator(f'#outcomes tr[data-id="job:{job_id}"] .outcome')
        playwright_api.expect(cell).to_have_text("queued")


def test_a_range_of_dead_callbacks_is_replayed_after_a_confirmation(
    page: Any, stack: dict[str, Any]
) -> None:
    # callbacks that fail all three attempts of their budget (9 requests for 3 deliveries on one
    # path), then succeed: dead letters of kind "callback", which no other test here makes
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    url = f"{stack['receiver'].url}/flaky?fail=9&case={uuid.uuid4().hex}"
    jobs = [submit(stack, {"message": i, "callback_url": url}) for i in range(3)]

    def delivery(job_id: str) -> dict[str, Any] | None:
        found = httpx.get(f"{stack['base']}/v1/jobs/{job_id}/deliveries", headers=AUTH, timeout=10)
        return found.json()[0] if found.json() else None

    for job_id in jobs:
        wait_for(lambda job_id=job_id: (delivery(job_id) or {}).get("status") == "dead", timeout=60)

    sign_in(page, ADMIN_KEY)
    page.click("text=Dead letters")
    page.select_option("#kind", "callback")
    page.fill("#since", since)
    page.click("#filter")
    playwright_api.expect(page.locator("#dead-letters tbody tr")).to_have_count(3)
    page.click("#replay-range")
    playwright_api.expect(page.locator("#range-count")).to_have_text("3")
    playwright_api.expect(page.locator("#range-kind")).to_have_text("callback")
    page.click("#confirm-range")
    playwright_api.expect(page.locator("#replayed-count")).to_have_text("3")
    playwright_api.expect(page.locator("#skipped-count")).to_have_text("0")
    # a real worker sends them again, and now the receiver takes them
    for job_id in jobs:
        wait_for(
            lambda job_id=job_id: (delivery(job_id) or {}).get("status") == "delivered",
            timeout=60,
        )
    page.goto("/console/dead-letters?kind=callback")
    playwright_api.expect(page.locator("#empty")).to_be_visible()


@pytest.fixture
def endpoint(stack: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An endpoint taking the module's job.succeeded events, deleted after the test (the other
    tests' jobs are then not offered to it)."""
    made = httpx.post(
        f"{stack['base']}/v1/endpoints",
        json={
            "url": f"{stack['receiver'].url}/ok",
            "event_types": ["job.succeeded"],
            "sources": ["jobs"],
            "description": XSS,
        },
        headers=AUTH,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    yield made.json()
    httpx.delete(f"{stack['base']}/v1/endpoints/{made.json()['id']}", headers=AUTH, timeout=10)


def test_an_endpoint_is_seen_and_steered_from_its_page(
    page: Any, stack: dict[str, Any], endpoint: dict[str, Any]
) -> None:
    made = endpoint
    wait_status(stack, submit(stack, {"message": "to the endpoint"}), "succeeded")

    def delivered() -> bool:
        listed = httpx.get(
            f"{stack['base']}/v1/endpoints/{made['id']}/deliveries", headers=AUTH, timeout=10
        ).json()["items"]
        return bool(listed) and listed[0]["status"] == "delivered"

    wait_for(delivered, timeout=30)  # the job's outcome reached it
    sign_in(page, ADMIN_KEY)
    page.click("nav >> text=Endpoints")
    row = page.locator(f'#endpoints tr[data-id="{made["id"]}"]')
    playwright_api.expect(row.locator(".circuit")).to_have_text("closed")
    row.locator("a").first.click()
    playwright_api.expect(page.locator("#deliveries tbody tr .status")).to_have_text("delivered")

    page.click("#disable")
    playwright_api.expect(page.locator("#status")).to_have_text("disabled")
    playwright_api.expect(page.locator("#disabled-reason")).to_have_text("disabled by the operator")
    page.click("#enable")
    playwright_api.expect(page.locator("#status")).to_have_text("enabled")

    page.click("#rotate")
    secret = page.inner_text("#secret")
    assert secret.startswith("whsec_") and secret != made["secret"]
    playwright_api.expect(page.locator("#secret-warning")).to_contain_text("never again")
    page.click("text=Back to the endpoint")
    assert secret not in page.content()
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_a_job_page_shows_the_job_and_its_deliveries(page: Any, stack: dict[str, Any]) -> None:
    receiver = stack["receiver"]
    url = f"{receiver.url}/flaky?fail=1"
    job_id = submit(
        stack, {"message": {"order": 42, "items": ["tea", "cups"]}, "callback_url": url}
    )
    wait_status(stack, job_id, "succeeded")

    def delivered() -> bool:
        page_json = httpx.get(
            f"{stack['base']}/v1/jobs/{job_id}/deliveries", headers=AUTH, timeout=10
        ).json()
        return bool(page_json) and page_json[0]["status"] == "delivered"

    wait_for(delivered, timeout=30)
    sign_in(page, ADMIN_KEY)
    page.fill("input[name=id]", job_id)
    page.click("text=Open job")
    assert page.url.endswith(f"/console/jobs/{job_id}")
    playwright_api.expect(page.locator("#status")).to_have_text("succeeded")
    assert json.loads(page.inner_text("#payload"))["message"] == {
        "order": 42,
        "items": ["tea", "cups"],
    }
    assert json.loads(page.inner_text("#result"))["attempt"] == 1
    delivery = page.locator("section.delivery")
    playwright_api.expect(delivery.locator("tbody tr")).to_have_count(2)
    playwright_api.expect(delivery.locator(".status")).to_have_text("delivered")
    shoot(page, "console-job.png")


def test_planted_markup_shows_as_text_and_never_runs(page: Any, stack: dict[str, Any]) -> None:
    job_id = submit(stack, {"message": XSS, "fail_permanently": True})
    wait_status(stack, job_id, "failed")
    # a dead letter whose error holds markup (a receiver's or a library's text could)
    r = redis.Redis.from_url(stack["url"])
    r.hset(Keys(stack["prefix"]).job(job_id), "error", json.dumps({"detail": XSS}))
    r.close()
    sign_in(page, ADMIN_KEY)
    for path in (f"/console/jobs/{job_id}", f"/console/dead-letters/job:{job_id}"):
        page.goto(path)
        assert XSS in page.inner_text("#payload")
        assert XSS in page.inner_text("#error")
        assert page.locator("main script, main img").count() == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
    page.goto("/console/dead-letters")
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_headers_cookie_and_sign_out(page: Any, stack: dict[str, Any]) -> None:
    sign_in(page, ADMIN_KEY)
    answer = page.goto("/console")
    headers = answer.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-content-type-options"] == "nosniff"
    cookie = next(c for c in page.context.cookies() if c["name"] == "gw_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain http on loopback; https sets it
    assert cookie["path"] == "/console"
    # the page's script cannot read the session cookie
    assert "gw_console" not in page.evaluate("document.cookie")
    # last in the module: the overview now shows scheduled jobs and dead letters
    playwright_api.expect(page.locator("#live")).to_have_text("live")
    shoot(page, "console-overview.png")

    # the overview's event stream, read as any client would with the session's cookie
    stream_url = f"{stack['base']}/console/stream/overview"
    session = {"gw_console": cookie["value"]}
    with httpx.stream("GET", stream_url, cookies=session, timeout=10) as sse:
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.headers["content-security-policy"] == headers["content-security-policy"]
        lines = sse.iter_lines()
        assert next(lines) == "event: overview"
        snapshot = json.loads(next(lines).removeprefix("data: "))
    assert {q["name"] for q in snapshot["queues"]} >= {"default", "callbacks"}

    # a second tab on the overview follows the sign-out made in the first one
    other = page.context.new_page()
    other.goto("/console")
    playwright_api.expect(other.locator("#live")).to_have_text("live")
    page.click("#sign-out")
    assert page.url.endswith("/console/sign-in")
    other.wait_for_url("**/console/sign-in", timeout=10_000)
    for path in ("/console", "/console/dead-letters", "/console/jobs/anything"):
        page.goto(path)
        assert page.url.endswith("/console/sign-in"), path
    assert not [c for c in page.context.cookies() if c["name"] == "gw_console"]
