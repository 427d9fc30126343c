"""The console's jobs page and job timeline in a real browser (Debian's Chromium, headless, driven
by Playwright), against a real `gateway api` process and a real worker on a database of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.statuses import JobStatus
from gateway.embedded import EmbeddedRedis, free_port
from tasks.keys import Keys
from tests.conftest import API_KEY, AUTH, Processes, api_ready, process_env, wait_for
from tests.e2e.test_console import shoot

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (.ci/run apt-installs it)",
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An API process and a default-queue worker on database 2."""
    url = f"{redis_server}/2"
    redis.Redis.from_url(url).flushdb()
    prefix = f"jobs-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path_factory.mktemp("console-jobs"))
    env = process_env(url, prefix)
    procs.start(["worker", "default", "--concurrency", "2"], env)
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield {"base": base, "url": url, "prefix": prefix, "procs": procs}
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system: Playwright downloads no browser."""
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, stack: dict[str, Any]) -> Iterator[Any]:
    """A signed-in browser tab on the console."""
    context = browser.new_context(base_url=stack["base"], viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    tab.goto("/console/sign-in")
    tab.fill("#key", API_KEY)
    tab.click("button[type=submit]")
    assert tab.url.endswith("/console")
    yield tab
    context.close()


def submit(stack: dict[str, Any], body: dict[str, Any]) -> str:
    answer = httpx.post(f"{stack['base']}/v1/jobs/echo", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_status(stack: dict[str, Any], job_id: str, status: str) -> None:
    def reached() -> bool:
        view = httpx.get(f"{stack['base']}/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()
        return bool(view["status"] == status)

    try:
        wait_for(reached, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack['procs'].logs()}") from None


def timeline(page: Any) -> list[tuple[str, str]]:
    rows = page.locator("#attempt-timeline tbody tr")
    return [
        (
            rows.nth(i).locator(".attempt-outcome").inner_text(),
            rows.nth(i).locator(".attempt-error").inner_text(),
        )
        for i in range(rows.count())
    ]


def test_a_submitted_job_appears_and_succeeds_without_a_reload(
    page: Any, stack: dict[str, Any]
) -> None:
    page.click("nav >> text=Jobs")
    assert page.url.endswith("/console/jobs")
    expect(page.locator("#jobs-live")).to_have_text("live")
    expect(page.locator("#page-time")).to_contain_text("ms")
    page.evaluate("window.__same_page = 1")

    job_id = submit(stack, {"message": "watch me", "sleep_ms": 300})
    row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
    expect(row.locator(".job-status")).to_have_text("succeeded")
    expect(row.locator(".job-kind")).to_have_text("echo")
    expect(row.locator(".job-attempts")).to_have_text("1")
    assert page.locator("#jobs tbody tr").first.get_attribute("data-job-id") == job_id
    assert page.evaluate("window.__same_page") == 1  # updated in place, not reloaded
    shoot(page, "console-jobs.png")

    # filters, as a person sets them
    page.select_option("#kind", "echo")
    page.select_option("#status", "succeeded")
    page.click("#filter")
    expect(page.locator(f'#jobs tr[data-job-id="{job_id}"]')).to_have_count(1)
    page.select_option("#status", "failed")
    page.click("#filter")
    expect(page.locator(f'#jobs tr[data-job-id="{job_id}"]')).to_have_count(0)
    page.select_option("#status", "")
    page.fill("#since", "2000-01-01T00:00:00")
    page.fill("#until", "2000-01-02T00:00:00")
    page.click("#filter")
    expect(page.locator("#no-jobs")).to_be_visible()

    page.goto("/console/jobs")
    page.click(f'#jobs tr[data-job-id="{job_id}"] .job-id a')
    # the URL changes when navigation commits, before the new page is parsed: wait for its load
    page.wait_for_url(f"**/console/jobs/{job_id}", wait_until="load")
    assert timeline(page) == [("succeeded", "")]
    started = page.locator("#attempt-timeline .attempt-started").inner_text()
    ended = page.locator("#attempt-timeline .attempt-ended").inner_text()
    assert started and ended and started <= ended


def test_a_retried_and_a_dead_job_show_every_attempt(page: Any, stack: dict[str, Any]) -> None:
    retried = submit(stack, {"message": "twice", "fail_attempts": 1})
    dead = submit(stack, {"message": "never", "fail_attempts": 9})
    wait_status(stack, retried, "succeeded")
    wait_status(stack, dead, "dead")

    page.goto(f"/console/jobs/{retried}")
    assert timeline(page) == [
        ("retrying", "echo_retry: echo was asked to fail attempt 1"),
        ("succeeded", ""),
    ]
    page.goto(f"/console/jobs/{dead}")
    assert [outcome for outcome, _ in timeline(page)] == ["retrying", "retrying", "dead"]
    # the timeline is kept with the dead letter, as its record is
    r = redis.Redis.from_url(stack["url"])
    keys = Keys(stack["prefix"])
    assert r.ttl(keys.job_attempts(dead)) == -1
    assert r.ttl(keys.job_attempts(retried)) > 0
    # the real worker's claim, retry and finish moved each between the index sets: one set each
    for job_id, status in ((retried, "succeeded"), (dead, "dead")):
        holding = [s for s in JobStatus if r.zscore(keys.jobs_by("echo", s), job_id) is not None]
        assert holding == [status]
        assert r.zscore(keys.jobs_by("echo", status), job_id) == r.zscore(keys.jobs_by_time, job_id)
    r.close()

    # the jobs page's status filter finds it among the dead, and older pages chain by cursor
    page.goto("/console/jobs?status=dead")
    expect(page.locator(f'#jobs tr[data-job-id="{dead}"] .job-status')).to_have_text("dead")


def test_the_stream_needs_a_session_and_lets_go_of_redis(page: Any, stack: dict[str, Any]) -> None:
    stream = f"{stack['base']}/console/jobs/stream"
    anonymous = httpx.get(stream, timeout=10, follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].endswith("/console/sign-in")

    r = redis.Redis.from_url(stack["url"])

    def subscribers() -> int:
        # patterns subscribed to (the worker has kombu's own): ours comes and goes with the stream
        return int(r.pubsub_numpat())

    before = subscribers()
    cookie = next(c for c in page.context.cookies() if c["name"] == "gw_console")
    with httpx.stream(
        "GET", stream, cookies={"gw_console": cookie["value"]}, params={"kind": "echo"}
    ) as sse:
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert "script-src 'self'" in sse.headers["content-security-policy"]
        lines = sse.iter_lines()
        assert next(lines) == "event: ready"
        job_id = submit(stack, {"message": "streamed"})
        for line in lines:
            if line.startswith("data: ") and job_id in line:
                break
        assert subscribers() == before + 1
    # the client went: the subscription (and its connection) ends with it
    wait_for(lambda: subscribers() == before, timeout=10)
    r.close()


def test_older_pages_follow_the_cursor(page: Any, stack: dict[str, Any]) -> None:
    later = [submit(stack, {"message": f"later {n}", "delay_seconds": 3600}) for n in range(55)]
    page.goto("/console/jobs?kind=echo&status=scheduled")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(50)
    first = [rows.nth(i).get_attribute("data-job-id") for i in range(50)]
    page.click("#older")
    expect(rows).to_have_count(5)
    second = [rows.nth(i).get_attribute("data-job-id") for i in range(5)]
    assert sorted(first + second) == sorted(later)
    assert page.locator("#older").count() == 0
    page.goto("/console/jobs?cursor=not-ours")
    expect(page.locator("main")).to_contain_text("not one of ours")


def test_the_stream_ends_when_redis_goes(tmp_path: Path) -> None:
    server = EmbeddedRedis().start()
    procs = Processes(tmp_path)
    try:
        port = free_port()
        procs.start(["api", "--port", str(port)], process_env(server.url, "jobs-drop:"))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: api_ready(base), timeout=30)
        with httpx.Client(base_url=base, timeout=10) as http:
            form = http.get("/console/sign-in").text
            token = form.split('name="signin_token" value="', 1)[1].split('"', 1)[0]
            signed = http.post("/console/sign-in", data={"key": API_KEY, "signin_token": token})
            assert signed.status_code == 303
            with http.stream("GET", "/console/jobs/stream") as sse:
                lines = sse.iter_lines()
                assert next(lines) == "event: ready"
                server.stop()
                # the stream says so and ends (the browser's EventSource then reconnects)
                rest = list(lines)
        assert "event: unavailable" in rest, rest
    finally:
        procs.stop()
        server.stop()


def test_a_burst_of_changes_is_read_once_per_job_and_bounded(
    page: Any, stack: dict[str, Any]
) -> None:
    keys = Keys(stack["prefix"])
    job_id = submit(stack, {"message": "burst", "delay_seconds": 3600})  # stays scheduled
    cookie = next(c for c in page.context.cookies() if c["name"] == "gw_console")
    r = redis.Redis.from_url(stack["url"])
    stream = f"{stack['base']}/console/jobs/stream"
    with httpx.stream("GET", stream, cookies={"gw_console": cookie["value"]}, timeout=10) as sse:
        lines = sse.iter_lines()
        assert next(lines) == "event: ready"
        pipe = r.pipeline(transaction=False)
        for _ in range(100):  # one job changing 100 times at once: read and sent once a gathering
            pipe.publish(keys.job_changes(job_id), "progress")
        for n in range(500):  # more jobs than one gathering reads: the page is told
            pipe.publish(keys.job_changes(f"gone-{n}"), "queued")
        pipe.execute()
        events: list[str] = []
        for line in lines:
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            if "overflow" in events:
                break
    r.close()
    # once per gathering (200 ms): the 100 changes may straddle two of them, never more
    assert 1 <= events.count("job") <= 2, events
