"""The console's job page, live, in a real browser (Debian's Chromium, headless, via Playwright):
a job opened while it waits reaches `succeeded` on the page without a reload, through
/console/jobs/{id}/stream and static/job.js, with a real API process and real workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.embedded import free_port
from tests.conftest import API_KEY, PLAIN, Processes, api_ready, process_env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's Chromium at /usr/bin/chromium (.ci/run apt-installs it)",
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def api(
    worker_redis_url: str, prefix: str, workers: Processes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An API process beside the session's workers (API_KEY is its admin key)."""
    procs = Processes(tmp_path_factory.mktemp("job-live"))
    port = free_port()
    procs.start(["api", "--port", str(port)], process_env(worker_redis_url, prefix))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield base
    finally:
        procs.stop()


@pytest.fixture
def page(api: str) -> Iterator[Any]:
    """A signed-in console tab in headless Chromium."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        tab = browser.new_context(base_url=api).new_page()
        tab.set_default_timeout(20_000)
        tab.goto("/console/sign-in")
        tab.fill("#key", API_KEY)
        tab.click("button[type=submit]")
        tab.wait_for_url("**/console")
        yield tab
        browser.close()


def test_a_waiting_jobs_page_reaches_succeeded_without_a_reload(page: Any, api: str) -> None:
    body = {"message": {"note": "<b>not markup</b>"}, "sleep_ms": 800, "delay_seconds": 1.5}
    answer = httpx.post(f"{api}/v1/jobs/echo", json=body, headers=PLAIN, timeout=10)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    page.goto(f"/console/jobs/{job_id}")
    expect = playwright_api.expect
    expect(page.locator("#status")).to_have_text("scheduled")
    expect(page.locator("#result-part")).to_be_hidden()
    page.evaluate("window.__samePage = true")  # gone if the page were loaded again

    expect(page.locator("#job-live")).to_have_text("live")
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.locator("#status")).to_have_class("status status-succeeded")
    expect(page.locator("#job-live")).to_have_text("final")
    expect(page.locator("#attempts")).to_have_text("1")
    expect(page.locator("#progress-text")).to_have_text("100 %")
    assert page.eval_on_selector("#progress", "bar => bar.value") == 100
    expect(page.locator("#result-part")).to_be_visible()
    # the result came in as text: its markup is shown, not parsed
    assert "<b>not markup</b>" in page.inner_text("#result")
    assert page.locator("#result b").count() == 0
    assert page.inner_text("#finished-at")
    assert page.evaluate("window.__samePage") is True
    # the parts an attempt's end changes came in too, as the server renders them
    outcomes = page.locator("#attempt-timeline .attempt-outcome")
    expect(outcomes).to_have_text(["succeeded"])
    expect(page.locator("#no-attempts")).to_have_count(0)
    assert page.evaluate("window.__samePage") is True


def test_a_dying_jobs_timeline_and_replay_button_arrive_without_a_reload(
    page: Any, api: str
) -> None:
    body = {"message": "<i>nope</i>", "fail_attempts": 9, "delay_seconds": 1}
    answer = httpx.post(f"{api}/v1/jobs/echo", json=body, headers=PLAIN, timeout=10)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    page.goto(f"/console/jobs/{job_id}")
    expect = playwright_api.expect
    expect(page.locator("#no-attempts")).to_be_visible()
    expect(page.locator("#job-actions button")).to_have_count(0)
    page.evaluate("window.__samePage = true")

    outcomes = page.locator("#attempt-timeline .attempt-outcome")
    expect(outcomes.first).to_have_text("retrying")  # the first attempt's end, as it happens
    expect(page.locator("#status")).to_have_text("dead", timeout=60_000)
    expect(outcomes).to_have_text(["retrying", "retrying", "dead"])
    expect(page.locator("#job-actions button")).to_have_text("Replay")
    assert page.locator("#attempt-timeline i").count() == 0  # errors stay text
    assert page.evaluate("window.__samePage") is True
