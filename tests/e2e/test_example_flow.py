"""The original example, through a real uvicorn process, real Redis and a real Celery worker."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import Processes, wait_for


def test_add_returns_a_task_id_and_result_becomes_7(live_api: str, workers: Processes) -> None:
    submitted = httpx.get(f"{live_api}/add/2/5", timeout=5)
    assert submitted.status_code == 200
    task_id = submitted.json()["task_id"]
    assert set(submitted.json()) == {"task_id"}

    def done() -> dict | None:
        body = httpx.get(f"{live_api}/result/{task_id}", timeout=5).json()
        assert body["status"] in ("pending", "completed"), body
        return body if body["status"] == "completed" else None

    assert wait_for(done, timeout=30)["result"] == 7, workers.logs()


def test_result_is_pending_while_not_done(live_api: str) -> None:
    unknown = str(uuid.uuid4())
    body = httpx.get(f"{live_api}/result/{unknown}", timeout=5).json()
    assert body == {"task_id": unknown, "status": "pending"}


def test_add_refuses_non_numbers_in_the_error_shape(live_api: str) -> None:
    response = httpx.get(f"{live_api}/add/two/5", timeout=5)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_a_job_through_the_real_server_process(live_api: str, workers: Processes) -> None:
    """uvicorn as deployed (uvloop, httptools), not the in-process test client."""
    headers = {"Authorization": "Bearer test-key-0123456789"}
    accepted = httpx.post(f"{live_api}/v1/jobs/echo", json={"message": "real"}, headers=headers)
    assert accepted.status_code == 202, accepted.text
    url = f"{live_api}{accepted.json()['status_url']}"

    def done() -> dict | None:
        view = httpx.get(url, headers=headers, timeout=5).json()
        return view if view["status"] == "succeeded" else None

    assert wait_for(done, timeout=30)["result"] == {"message": "real", "attempt": 1}
