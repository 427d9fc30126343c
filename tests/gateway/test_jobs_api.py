"""The job API against real Redis, with no worker consuming: what is queued can be inspected."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import redis
from fastapi.testclient import TestClient

from tests.conftest import AUTH


def queued_messages(r: redis.Redis, queue: str = "default") -> list[dict]:
    """Celery messages waiting on ``queue``, decoded."""
    return [json.loads(raw) for raw in r.lrange(queue, 0, -1)]


def test_submit_answers_202_after_the_job_and_its_message_are_in_redis(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    response = client.post("/v1/jobs/echo", json={"message": "hello"}, headers=AUTH)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["status_url"] == f"/v1/jobs/{body['id']}"
    record = quiet_redis.hgetall(f"{prefix}job:{body['id']}")
    assert record[b"status"] == b"queued"
    assert json.loads(record[b"payload"]) == {"message": "hello"}
    [message] = queued_messages(quiet_redis)
    assert message["headers"]["task"] == "jobs.echo"
    assert message["headers"]["id"] == body["id"]
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [body["id"]] and kwargs == {}
    assert message["content-type"] == "application/json"


def test_job_status_reads_back(client: TestClient) -> None:
    job_id = client.post("/v1/jobs/echo", json={}, headers=AUTH).json()["id"]

    view = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()

    assert view["id"] == job_id
    assert view["kind"] == "echo"
    assert view["status"] == "queued"
    assert view["attempts"] == 0
    assert view["created_at"].endswith("Z")
    assert view["started_at"] is None and view["finished_at"] is None
    assert view["result"] is None and view["error"] is None and view["progress"] == 0


def test_unknown_job_is_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/jobs/does-not-exist", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"code": "job_not_found", "detail": "no job does-not-exist"}


def test_unknown_kind_is_404(client: TestClient) -> None:
    response = client.post("/v1/jobs/nope", json={}, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_kind"


def test_api_key_required_and_checked(client: TestClient) -> None:
    missing = client.post("/v1/jobs/echo", json={})
    wrong = client.post("/v1/jobs/echo", json={}, headers={"Authorization": "Bearer wrong"})
    malformed = client.post("/v1/jobs/echo", json={}, headers={"Authorization": "Basic abc"})

    assert [r.status_code for r in (missing, wrong, malformed)] == [401, 401, 401]
    assert missing.json()["code"] == "missing_api_key"
    assert wrong.json()["code"] == "invalid_api_key"
    assert malformed.json()["code"] == "malformed_api_key"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/jobs/x").status_code == 401


def test_another_callers_job_is_not_visible(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    job_id = client.post("/v1/jobs/echo", json={}, headers=AUTH).json()["id"]
    quiet_redis.hset(f"{prefix}job:{job_id}", "owner", "someone-else")
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404


def test_validation_error_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/jobs/echo", json={"sleep_ms": -5}, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["detail"].startswith("sleep_ms:")
    assert body["errors"][0]["loc"] == ["sleep_ms"]


def test_body_must_be_a_json_object(client: TestClient) -> None:
    bad_json = client.post(
        "/v1/jobs/echo", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    not_object = client.post("/v1/jobs/echo", json=[1, 2], headers=AUTH)
    assert (bad_json.status_code, bad_json.json()["code"]) == (400, "invalid_json")
    assert (not_object.status_code, not_object.json()["code"]) == (400, "invalid_json")


def test_content_type_must_be_json(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs/echo", content=b"message=hi", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_oversized_body_is_413_by_length_and_by_stream(
    client: TestClient, quiet_redis: redis.Redis
) -> None:
    big = b'{"message": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    declared = client.post(
        "/v1/jobs/echo", content=big, headers={**AUTH, "Content-Type": "application/json"}
    )

    def chunks():
        yield big[:1000]
        yield big[1000:]

    streamed = client.post(
        "/v1/jobs/echo", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert declared.status_code == 413 and streamed.status_code == 413
    assert streamed.json()["code"] == "payload_too_large"
    assert quiet_redis.llen("default") == 0


def test_idempotency_key_returns_the_same_job(client: TestClient, quiet_redis: redis.Redis) -> None:
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs/echo", json={"message": 1}, headers=headers)
    again = client.post("/v1/jobs/echo", json={"message": 1}, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert quiet_redis.llen("default") == 1


def test_idempotency_key_with_another_body_is_409(
    client: TestClient, quiet_redis: redis.Redis
) -> None:
    headers = {**AUTH, "Idempotency-Key": "order-43"}
    client.post("/v1/jobs/echo", json={"message": 1}, headers=headers)
    clash = client.post("/v1/jobs/echo", json={"message": 2}, headers=headers)
    assert clash.status_code == 409
    assert clash.json()["code"] == "idempotency_key_reused"
    assert quiet_redis.llen("default") == 1


def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    client: TestClient, quiet_redis: redis.Redis
) -> None:
    headers = {**AUTH, "Idempotency-Key": "burst-1"}

    def submit(_: int) -> str:
        return client.post("/v1/jobs/echo", json={"message": "x"}, headers=headers).json()["id"]

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(submit, range(32)))
    assert len(ids) == 1
    assert quiet_redis.llen("default") == 1


def test_delayed_job_waits_in_the_schedule(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    response = client.post("/v1/jobs/echo", json={"delay_seconds": 3600}, headers=AUTH)
    assert response.json()["status"] == "scheduled"
    assert quiet_redis.llen("default") == 0
    assert quiet_redis.zcard(f"{prefix}schedule") == 1


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "Not Found"}
