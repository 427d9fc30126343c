"""Callbacks through real workers to real HTTP receivers on loopback: signed, retried,
dead-lettered, replayed; private addresses refused at submit and at connect."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.receiver import Receiver

SECRET = "whsec_" + "dGVzdC1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5"  # base64 of a test secret
OLD_SECRET = "whsec_" + "b2xkLXNpZ25pbmctc2VjcmV0LTAxMjM0NTY3ODk="
FAST_RETRIES = json.dumps({"callbacks": {"max_attempts": 3, "schedule": [0.3, 0.3]}})
ALLOW_LOOPBACK = {
    "OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32",
    "OUTBOUND_ALLOW_HTTP": "true",
    "OUTBOUND_TIMEOUT_SECONDS": "1",
    "SIGNING_SECRETS": f"{SECRET},{OLD_SECRET}",
    "RETRY_POLICIES": FAST_RETRIES,
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cb(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Workers for default + callbacks on their own database, loopback allowed."""
    url = f"{redis_server}/12"
    redis.Redis.from_url(url).flushdb()
    prefix = f"cb-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path_factory.mktemp("cb"))
    env = process_env(url, prefix, **ALLOW_LOOPBACK)
    procs.start(["worker", "default", "--concurrency", "4"], env)
    procs.start(["worker", "callbacks", "--concurrency", "8"], env)
    # a callbacks worker whose guard does NOT allow loopback, on a queue of its own is not possible
    # (one callbacks queue), so connect-time refusal is shown by the API allowing what workers don't
    try:
        yield {"url": url, "prefix": prefix, "procs": procs}
    finally:
        procs.stop()


@pytest.fixture
def api(cb: dict[str, Any]) -> Iterator[TestClient]:
    settings = make_settings(
        cb["url"],
        cb["prefix"],
        outbound_allow_networks=["127.0.0.1/32"],
        outbound_allow_http=True,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def submit(api: TestClient, body: dict[str, Any]) -> str:
    response = api.post("/v1/jobs/echo", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def final_deliveries(api: TestClient, cb: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    """Poll until the job has a delivery in a final state."""

    def check() -> list[dict[str, Any]] | None:
        found = api.get(f"/v1/jobs/{job_id}/deliveries", headers=AUTH).json()
        done = found and all(d["status"] in ("delivered", "failed", "dead") for d in found)
        return found if done else None

    try:
        return wait_for(check, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cb['procs'].logs()}") from None


def test_callback_is_signed_and_verifies_with_standardwebhooks(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    job_id = submit(api, {"message": "hi", "callback_url": f"{receiver.url}/ok?job=1"})

    [delivery] = final_deliveries(api, cb, job_id)

    assert delivery["status"] == "delivered"
    [request] = [r for r in receiver.on("/ok") if job_id.encode() in r.body]
    # a receiver verifies with the reference library, unchanged, with either secret of a rotation
    for secret in (SECRET, OLD_SECRET):
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "job.succeeded"
    assert payload["data"] == {
        "id": job_id,
        "kind": "echo",
        "status": "succeeded",
        "attempts": 1,
        "result": {"message": "hi", "attempt": 1},
    }
    assert request.headers["webhook-id"] == delivery["id"]
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200 and attempt["latency_ms"] >= 0


def test_a_failing_receiver_gets_the_callback_once_it_recovers(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    path = f"/flaky?fail=2&n={uuid.uuid4().hex}"
    job_id = submit(api, {"callback_url": f"{receiver.url}{path}"})

    [delivery] = final_deliveries(api, cb, job_id)

    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    got = [r for r in receiver.on("/flaky") if job_id.encode() in r.body]
    assert len(got) == 3
    assert {r.headers["webhook-id"] for r in got} == {delivery["id"]}  # same id on every attempt


def test_a_hanging_receiver_times_out_is_retried_then_dead_then_replayed(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    job_id = submit(api, {"callback_url": f"{receiver.url}/hang"})

    [delivery] = final_deliveries(api, cb, job_id)

    assert delivery["status"] == "dead"
    assert len(delivery["attempts"]) == 3
    assert all(a["status_code"] is None and a["error"] for a in delivery["attempts"])
    dead = api.get("/v1/dead-letters", params={"kind": "callback"}, headers=AUTH).json()
    assert f"delivery:{delivery['id']}" in [d["id"] for d in dead]

    receiver.release.set()  # the receiver recovers: answers at once from now on
    replay = api.post(f"/v1/dead-letters/delivery:{delivery['id']}/replay", headers=AUTH)
    assert replay.status_code == 202
    again = api.post(f"/v1/dead-letters/delivery:{delivery['id']}/replay", headers=AUTH)
    assert again.status_code == 404  # no longer dead: one replay

    [replayed] = final_deliveries(api, cb, job_id)
    assert replayed["status"] == "delivered"
    assert replayed["id"] == delivery["id"]
    assert replayed["attempts"][-1]["status_code"] == 200


def test_410_stops_at_once(api: TestClient, cb: dict[str, Any], receiver: Receiver) -> None:
    job_id = submit(api, {"callback_url": f"{receiver.url}/gone"})

    [delivery] = final_deliveries(api, cb, job_id)

    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [410]


def test_429_with_retry_after_is_retried(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    job_id = submit(api, {"callback_url": f"{receiver.url}/busy"})

    [delivery] = final_deliveries(api, cb, job_id)

    assert [a["status_code"] for a in delivery["attempts"]] == [429, 200]


def test_a_failed_job_sends_job_failed(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    job_id = submit(api, {"fail_permanently": True, "callback_url": f"{receiver.url}/ok"})

    final_deliveries(api, cb, job_id)

    [request] = [r for r in receiver.on("/ok") if job_id.encode() in r.body]
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"]["code"] == "echo_failed"
    assert payload["data"]["status"] == "failed"


def test_a_dead_job_is_a_dead_letter_with_a_failure_callback_and_replays(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    job_id = submit(api, {"fail_attempts": 3, "callback_url": f"{receiver.url}/ok"})
    final_deliveries(api, cb, job_id)
    assert api.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"] == "dead"
    dead = api.get("/v1/dead-letters", params={"kind": "echo"}, headers=AUTH).json()
    [entry] = [d for d in dead if d["id"] == f"job:{job_id}"]
    assert entry["error"]["code"] == "echo_retry"
    assert entry["payload"]["fail_attempts"] == 3

    bulk = api.post("/v1/dead-letters/replay", json={"kind": "echo"}, headers=AUTH).json()
    assert f"job:{job_id}" in bulk["ids"]

    def succeeded() -> dict[str, Any] | None:
        view = api.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        return view if view["status"] == "succeeded" else None

    view = wait_for(succeeded, timeout=30)
    assert view["result"]["attempt"] == 4  # attempts keep counting across the replay

    def callbacks() -> list[dict[str, Any]] | None:
        got = [json.loads(r.body) for r in receiver.on("/ok") if job_id.encode() in r.body]
        return got if len(got) >= 2 else None

    bodies = wait_for(callbacks, timeout=30)
    assert [b["type"] for b in bodies] == ["job.failed", "job.succeeded"]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://100.64.0.1/hook",
        "ftp://example.com/x",
    ],
)
def test_private_callback_refused_at_submit(api: TestClient, url: str) -> None:
    response = api.post("/v1/jobs/echo", json={"callback_url": url}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["code"] in ("url_blocked_address", "url_scheme_not_allowed")


def test_private_callback_refused_at_connect(
    cb: dict[str, Any], receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The API's guard allows loopback; a worker's guard does not: the dialled address decides."""
    url = cb["url"].rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(url).flushdb()
    prefix = f"cc-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path_factory.mktemp("cc"))
    strict = {**ALLOW_LOOPBACK, "OUTBOUND_ALLOW_NETWORKS": ""}
    procs.start(
        ["worker", "default", "callbacks", "--concurrency", "4"], process_env(url, prefix, **strict)
    )
    settings = make_settings(
        url, prefix, outbound_allow_networks=["127.0.0.1/32"], outbound_allow_http=True
    )
    try:
        with TestClient(create_app(settings)) as api:
            job_id = submit(api, {"callback_url": f"{receiver.url}/ok?strict=1"})
            [delivery] = final_deliveries(api, {"procs": procs}, job_id)
        assert delivery["status"] == "failed"
        assert "url_blocked_address" in delivery["attempts"][0]["error"]
        assert not [r for r in receiver.on("/ok") if job_id.encode() in r.body]
    finally:
        procs.stop()


def test_a_secret_in_a_callback_url_never_reaches_the_worker_logs(
    api: TestClient, cb: dict[str, Any], receiver: Receiver
) -> None:
    # Slack-style webhook URLs carry their secret in the path or query
    token = f"tok{uuid.uuid4().hex}"
    job_id = submit(api, {"message": "hi", "callback_url": f"{receiver.url}/ok?token={token}"})

    [delivery] = final_deliveries(api, cb, job_id)

    assert delivery["status"] == "delivered"
    assert any(token in path for path in receiver.counts)  # it was used ...
    assert token not in cb["procs"].logs()  # ... and never logged
