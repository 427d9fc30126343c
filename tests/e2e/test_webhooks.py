"""Inbound webhooks end to end: real `webhooks`, `callbacks` and `default` workers, a real
loopback receiver. A signed GitHub-style event is forwarded (signed with our secret, verified here
with `standardwebhooks`) and starts an `echo` job; duplicates and redelivered messages make
nothing twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.main import create_app
from tasks.events import process_message
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.receiver import Receiver

pytestmark = pytest.mark.e2e

GH_SECRET = "e2e-github-inbound-secret"
SIGNING = "whsec_" + "ZTJlLXdlYmhvb2stZm9yd2FyZC1zaWduaW5n"  # base64 of a test secret
SOURCES = """
[sources.github]
scheme = "github"
secrets_env = ["E2E_GITHUB_SECRET"]
events = ["push", "release", "issues"]

[[sources.github.routes]]
events = ["push"]
forward = ["{receiver}/ok?source=github"]

[[sources.github.routes]]
events = ["push", "release"]
job = {{ kind = "echo", event_key = "message" }}
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def wh(
    redis_server: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """webhooks + callbacks + default workers on a database of their own, loopback allowed."""
    url = f"{redis_server}/6"
    redis.Redis.from_url(url).flushdb()
    prefix = f"wh-{uuid.uuid4().hex[:6]}:"
    tmp = tmp_path_factory.mktemp("wh")
    sources = tmp / "sources.toml"
    sources.write_text(SOURCES.format(receiver=receiver.url))
    procs = Processes(tmp)
    env = process_env(
        url,
        prefix,
        WEBHOOK_SOURCES_FILE=str(sources),
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        SIGNING_SECRETS=SIGNING,
    )
    procs.start(["worker", "webhooks", "--concurrency", "8"], env)
    procs.start(["worker", "callbacks", "--concurrency", "8"], env)
    procs.start(["worker", "default", "--concurrency", "4"], env)
    try:
        yield {"url": url, "prefix": prefix, "procs": procs, "sources": sources}
    finally:
        procs.stop()


@pytest.fixture
def api(wh: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("E2E_GITHUB_SECRET", GH_SECRET)
    settings = make_settings(
        wh["url"],
        wh["prefix"],
        webhook_sources_file=wh["sources"],
        outbound_allow_networks=["127.0.0.1/32"],
        outbound_allow_http=True,
        signing_secrets=[SIGNING],
    )
    with TestClient(create_app(settings)) as client:
        yield client


def github_post(api: TestClient, event: str, body: bytes, delivery: str | None = None) -> Any:
    signature = hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/json",
        "x-github-event": event,
        "x-github-delivery": delivery or str(uuid.uuid4()),
        "x-hub-signature-256": f"sha256={signature}",
    }
    return api.post("/v1/webhooks/github", content=body, headers=headers)


def settled(api: TestClient, wh: dict[str, Any], event_id: str) -> dict[str, Any]:
    """Poll until the event is final, its deliveries are final and its jobs are final."""

    def check() -> dict[str, Any] | None:
        view = api.get(f"/v1/events/{event_id}", headers=AUTH).json()
        done = (
            view["status"] in ("routed", "ignored", "failed")
            and all(d["status"] in ("delivered", "failed", "dead") for d in view["deliveries"])
            and all(j["status"] in ("succeeded", "failed", "dead") for j in view["jobs"])
        )
        return view if done else None

    try:
        return wait_for(check, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{wh['procs'].logs()}") from None


def push_body(marker: str) -> bytes:
    return json.dumps(
        {"ref": "refs/heads/main", "after": marker, "repository": {"full_name": "acme/app"}}
    ).encode()


def test_a_push_is_forwarded_signed_and_starts_a_job(
    api: TestClient, wh: dict[str, Any], receiver: Receiver
) -> None:
    marker = uuid.uuid4().hex
    body = push_body(marker)
    accepted = github_post(api, "push", body)
    assert accepted.status_code == 202, accepted.text

    view = settled(api, wh, accepted.json()["id"])

    assert view["status"] == "routed"
    assert view["type"] == "push"
    [delivery] = view["deliveries"]
    assert delivery["status"] == "delivered"
    assert delivery["event_type"] == "push"
    [job] = view["jobs"]
    assert job["kind"] == "echo" and job["status"] == "succeeded"
    assert [r["route"] for r in view["routes"]] == [1, 2]
    # the receiver verifies the forward with the reference library and the gateway's secret
    [request] = [r for r in receiver.on("/ok") if marker.encode() in r.body]
    payload = Webhook(SIGNING).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == delivery["id"]
    assert payload["type"] == "push"
    assert payload["source"] == "github"
    assert payload["event_id"] == view["id"]
    assert payload["data"] == json.loads(body)
    # the job got the sender's event under its event_key
    job_record = redis.Redis.from_url(wh["url"]).hget(f"{wh['prefix']}job:{job['id']}", "result")
    assert json.loads(job_record)["message"] == json.loads(body)


def test_an_accepted_type_without_a_route_is_ignored(api: TestClient, wh: dict[str, Any]) -> None:
    accepted = github_post(api, "issues", b'{"action":"opened"}')
    assert accepted.status_code == 202
    view = settled(api, wh, accepted.json()["id"])
    assert view["status"] == "ignored"
    assert view["reason"] == "no route matches this event type"
    assert view["deliveries"] == [] and view["jobs"] == []


def test_concurrent_duplicates_are_processed_once(
    api: TestClient, wh: dict[str, Any], receiver: Receiver
) -> None:
    marker = uuid.uuid4().hex
    body = push_body(marker)
    delivery = str(uuid.uuid4())

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: github_post(api, "push", body, delivery), range(20)))

    assert sorted(a.status_code for a in answers) == [200] * 19 + [202]
    [event_id] = {a.json()["id"] for a in answers}
    view = settled(api, wh, event_id)
    assert len(view["deliveries"]) == 1 and len(view["jobs"]) == 1
    assert len([r for r in receiver.on("/ok") if marker.encode() in r.body]) == 1


def test_a_redelivered_message_makes_nothing_twice(
    api: TestClient, wh: dict[str, Any], receiver: Receiver
) -> None:
    """At least once in: the same webhooks.process message again finds the event final."""
    marker = uuid.uuid4().hex
    event_id = github_post(api, "push", push_body(marker)).json()["id"]
    first = settled(api, wh, event_id)

    r = redis.Redis.from_url(wh["url"])
    key = f"{wh['prefix']}event:{event_id}"
    r.lpush("webhooks", process_message(event_id))
    wait_for(lambda: r.llen("webhooks") == 0, timeout=10)
    time.sleep(1)  # let the worker take it: it finds the event final and drops it
    assert api.get(f"/v1/events/{event_id}", headers=AUTH).json() == first
    # a crash after the job was submitted but before the one transaction that writes the
    # deliveries and the final status: the event is still 'processing', no delivery exists
    [delivery_id] = [d["id"] for d in first["deliveries"]]
    r.delete(f"{wh['prefix']}deliveries:event:{event_id}", f"{wh['prefix']}delivery:{delivery_id}")
    r.hset(key, "status", "processing")
    r.lpush("webhooks", process_message(event_id))

    def again() -> dict[str, Any] | None:
        view = settled(api, wh, event_id)
        return view if view["attempts"] == 2 and view["deliveries"] else None

    second = wait_for(again, timeout=20)
    assert second["status"] == "routed"
    assert [d["id"] for d in second["deliveries"]] == [d["id"] for d in first["deliveries"]]
    assert [j["id"] for j in second["jobs"]] == [j["id"] for j in first["jobs"]]
    # the receiver saw the delivery twice, under one webhook-id: it can drop the second
    seen = [q for q in receiver.on("/ok") if marker.encode() in q.body]
    assert {q.headers["webhook-id"] for q in seen} == {delivery_id}
