"""Jobs through real Redis and a real worker process: success, retry with backoff, failure, dead."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import AUTH, Processes, wait_for


def run_to_end(client: TestClient, workers: Processes, body: dict[str, Any]) -> dict[str, Any]:
    """Submit an echo job and poll its status until it is final."""
    accepted = client.post("/v1/jobs/echo", json=body, headers=AUTH)
    assert accepted.status_code == 202, accepted.text
    url = accepted.json()["status_url"]

    def final() -> dict[str, Any] | None:
        view = client.get(url, headers=AUTH).json()
        return view if view["status"] in ("succeeded", "failed", "dead") else None

    try:
        return wait_for(final, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{workers.logs()}") from None


def test_a_job_runs_on_a_worker_and_its_result_is_queryable(
    e2e_client: TestClient, workers: Processes
) -> None:
    view = run_to_end(e2e_client, workers, {"message": {"hello": "world"}})
    assert view["status"] == "succeeded"
    assert view["result"] == {"message": {"hello": "world"}, "attempt": 1}
    assert view["attempts"] == 1
    assert view["progress"] == 100
    assert view["created_at"] <= view["started_at"] <= view["finished_at"]


def test_a_transient_failure_is_retried_then_succeeds(
    e2e_client: TestClient, workers: Processes
) -> None:
    view = run_to_end(e2e_client, workers, {"message": "m", "fail_attempts": 1})
    assert view["status"] == "succeeded"
    assert view["attempts"] == 2
    assert view["result"]["attempt"] == 2
    assert view["error"] is None


def test_a_permanent_failure_fails_at_once(e2e_client: TestClient, workers: Processes) -> None:
    view = run_to_end(e2e_client, workers, {"fail_permanently": True})
    assert view["status"] == "failed"
    assert view["attempts"] == 1
    assert view["error"]["code"] == "echo_failed"


def test_transient_failures_past_the_last_attempt_end_dead(
    e2e_client: TestClient, workers: Processes
) -> None:
    view = run_to_end(e2e_client, workers, {"fail_attempts": 99})
    assert view["status"] == "dead"
    assert view["attempts"] == 3  # echo's policy: 3 attempts
    assert view["error"]["code"] == "echo_retry"


def test_a_delayed_job_runs_once_when_due(e2e_client: TestClient, workers: Processes) -> None:
    view = run_to_end(e2e_client, workers, {"message": "later", "delay_seconds": 1})
    assert view["status"] == "succeeded"
    assert view["attempts"] == 1
