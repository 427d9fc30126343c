"""Endpoints end to end: real webhooks, default and callbacks workers, a real loopback receiver.

Two endpoints subscribed to different event types each receive exactly the events and job
outcomes they asked for, signed with their own secret; a disabled one gets nothing; a TOML forward
keeps working beside them; the deliveries are listed on the event, on the job and on the endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.main import create_app
from tasks.keys import Keys
from tests.conftest import AUTH, PLAIN, Processes, make_settings, process_env, wait_for
from tests.e2e.receiver import Received, Receiver

pytestmark = pytest.mark.e2e

INBOUND_SECRET = "e2e-endpoints-inbound-secret"
SOURCES = """
[sources.gh]
scheme = "github"
secrets_env = ["E2E_ENDPOINTS_SECRET"]

[[sources.gh.routes]]
events = ["push"]
forward = ["{receiver}/forward"]
"""
FAST_RETRIES = json.dumps({"callbacks": {"max_attempts": 2, "schedule": [0.3]}})


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(
    redis_server: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """webhooks, default and callbacks workers and the API, on a database of their own."""
    url = f"{redis_server}/3"
    redis.Redis.from_url(url).flushdb()
    prefix = f"ep-{uuid.uuid4().hex[:6]}:"
    tmp: Path = tmp_path_factory.mktemp("endpoints")
    sources = tmp / "sources.toml"
    sources.write_text(SOURCES.format(receiver=receiver.url))
    loopback: dict[str, Any] = {
        "outbound_allow_networks": ["127.0.0.1/32"],
        "outbound_allow_http": True,
    }
    env = process_env(
        url,
        prefix,
        WEBHOOK_SOURCES_FILE=str(sources),
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        OUTBOUND_TIMEOUT_SECONDS="2",
        RETRY_POLICIES=FAST_RETRIES,
        E2E_ENDPOINTS_SECRET=INBOUND_SECRET,
    )
    procs = Processes(tmp)
    procs.start(["worker", "webhooks", "--concurrency", "2"], env)
    procs.start(["worker", "default", "--concurrency", "2"], env)
    procs.start(["worker", "callbacks", "--concurrency", "4"], env)
    settings = make_settings(url, prefix, webhook_sources_file=sources, **loopback)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("E2E_ENDPOINTS_SECRET", INBOUND_SECRET)
            app = create_app(settings)
        with TestClient(app) as client:
            yield {"api": client, "procs": procs, "url": url, "keys": Keys(prefix)}
    finally:
        procs.stop()


def create_endpoint(api: TestClient, url: str, **fields: Any) -> dict[str, Any]:
    made = api.post("/v1/endpoints", json={"url": url, **fields}, headers=AUTH)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def send_github(api: TestClient, event_type: str, marker: str) -> str:
    """A signed GitHub-style delivery of ``event_type`` carrying ``marker``; the event id."""
    body = json.dumps({"marker": marker}).encode()
    signature = hmac.new(INBOUND_SECRET.encode(), body, hashlib.sha256).hexdigest()
    accepted = api.post(
        "/v1/webhooks/gh",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": event_type,
            "x-github-delivery": str(uuid.uuid4()),
            "x-hub-signature-256": f"sha256={signature}",
        },
    )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


def settled(stack: dict[str, Any], check: Any, timeout: float = 30) -> Any:
    try:
        return wait_for(check, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack['procs'].logs()}") from None


def all_final(deliveries: list[dict[str, Any]]) -> bool:
    return bool(deliveries) and all(
        d["status"] in ("delivered", "failed", "dead") for d in deliveries
    )


@pytest.fixture(scope="module")
def run(stack: dict[str, Any], receiver: Receiver) -> dict[str, Any]:
    """Three endpoints (one disabled), two events, two job outcomes; every delivery final."""
    api: TestClient = stack["api"]
    tag = uuid.uuid4().hex[:8]
    pushes = create_endpoint(
        api,
        f"{receiver.url}/a-{tag}",
        event_types=["push", "job.succeeded"],
        sources=["gh", "jobs"],
    )
    issues = create_endpoint(api, f"{receiver.url}/b-{tag}", event_types=["issues", "job.*"])
    off = create_endpoint(api, f"{receiver.url}/off-{tag}")
    assert api.post(f"/v1/endpoints/{off['id']}/disable", headers=AUTH).status_code == 200

    push = send_github(api, "push", f"push-{tag}")
    issue = send_github(api, "issues", f"issue-{tag}")
    ok = api.post("/v1/jobs/echo", json={"message": f"ok-{tag}"}, headers=AUTH).json()["id"]
    bad = api.post("/v1/jobs/echo", json={"fail_permanently": True}, headers=AUTH).json()["id"]

    events: dict[str, dict[str, Any]] = {}
    for event_id in (push, issue):
        events[event_id] = settled(
            stack,
            lambda e=event_id: (
                view
                if (view := api.get(f"/v1/events/{e}", headers=AUTH).json())["status"] == "routed"
                and all_final(view["deliveries"])
                else None
            ),
        )
    jobs = {
        job_id: settled(
            stack,
            lambda j=job_id: (
                found
                if all_final(found := api.get(f"/v1/jobs/{j}/deliveries", headers=AUTH).json())
                else None
            ),
        )
        for job_id in (ok, bad)
    }
    return {
        "tag": tag,
        "endpoints": {"pushes": pushes, "issues": issues, "off": off},
        "events": events,
        "jobs": jobs,
        "ids": {"push": push, "issue": issue, "ok": ok, "bad": bad},
    }


def received(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.on(path)]


def test_each_endpoint_gets_exactly_what_it_subscribed_to(
    run: dict[str, Any], receiver: Receiver
) -> None:
    tag, ids = run["tag"], run["ids"]

    to_pushes = received(receiver, f"/a-{tag}")
    to_issues = received(receiver, f"/b-{tag}")

    assert sorted((b["type"], b.get("event_id") or b["data"]["id"]) for b in to_pushes) == sorted(
        [("push", ids["push"]), ("job.succeeded", ids["ok"])]
    )
    assert sorted((b["type"], b.get("event_id") or b["data"]["id"]) for b in to_issues) == sorted(
        [("issues", ids["issue"]), ("job.succeeded", ids["ok"]), ("job.failed", ids["bad"])]
    )
    assert receiver.on(f"/off-{tag}") == []  # disabled: nothing offered
    push_body = next(b for b in to_pushes if b["type"] == "push")
    assert push_body["source"] == "gh" and push_body["data"] == {"marker": f"push-{tag}"}
    # the TOML route's forward still goes, beside the endpoints
    forwarded = [json.loads(r.body) for r in receiver.on("/forward")]
    assert ids["push"] in [b["event_id"] for b in forwarded]


def test_deliveries_are_listed_on_the_event_the_job_and_the_endpoint(
    run: dict[str, Any], stack: dict[str, Any]
) -> None:
    api: TestClient = stack["api"]
    pushes, issues = run["endpoints"]["pushes"], run["endpoints"]["issues"]
    ids, events, jobs = run["ids"], run["events"], run["jobs"]

    push_event = events[ids["push"]]
    by_endpoint = {d["endpoint_id"]: d for d in push_event["deliveries"]}
    assert set(by_endpoint) == {None, pushes["id"]}  # the forward, and the endpoint's
    issue_event = events[ids["issue"]]
    assert [d["endpoint_id"] for d in issue_event["deliveries"]] == [issues["id"]]
    assert issue_event["routes"] is None  # no TOML route: routed to the endpoint alone
    assert sorted(d["endpoint_id"] for d in jobs[ids["ok"]]) == sorted([pushes["id"], issues["id"]])
    assert [d["endpoint_id"] for d in jobs[ids["bad"]]] == [issues["id"]]
    for delivery in [*push_event["deliveries"], *issue_event["deliveries"]]:
        assert delivery["status"] == "delivered"

    listed = api.get(f"/v1/endpoints/{issues['id']}/deliveries", headers=AUTH).json()
    expected = {
        issue_event["deliveries"][0]["id"],
        jobs[ids["ok"]][[d["endpoint_id"] for d in jobs[ids["ok"]]].index(issues["id"])]["id"],
        jobs[ids["bad"]][0]["id"],
    }
    assert {d["id"] for d in listed["items"]} == expected
    assert api.get(f"/v1/endpoints/{issues['id']}", headers=AUTH).json()["deliveries"] == 3
    off = api.get(f"/v1/endpoints/{run['endpoints']['off']['id']}/deliveries", headers=AUTH)
    assert off.json()["items"] == []


def test_a_plain_key_sees_its_callback_but_not_the_operator_s_endpoint_deliveries(
    run: dict[str, Any], stack: dict[str, Any], receiver: Receiver
) -> None:
    api: TestClient = stack["api"]
    callback = f"{receiver.url}/own-{run['tag']}"
    body = {"message": "hi", "callback_url": callback}
    job_id = api.post("/v1/jobs/echo", json=body, headers=PLAIN).json()["id"]
    own = settled(
        stack,
        lambda: (
            found
            if all_final(found := api.get(f"/v1/jobs/{job_id}/deliveries", headers=PLAIN).json())
            and found
            else None
        ),
    )
    assert [(d["url"], d["endpoint_id"]) for d in own] == [(callback, None)]
    # the outcome did go to the endpoints taking job.succeeded, written with the final status
    made = redis.Redis.from_url(stack["url"]).lrange(
        stack["keys"].deliveries(f"job:{job_id}"), 0, -1
    )
    assert len(made) >= 3, made  # the callback, and the two endpoints subscribed to it


def verifies(request: Received, secret: str) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def test_each_endpoint_signs_with_its_own_secret(run: dict[str, Any], receiver: Receiver) -> None:
    tag = run["tag"]
    pushes, issues = run["endpoints"]["pushes"], run["endpoints"]["issues"]

    for path, own, other in (("a", pushes, issues), ("b", issues, pushes)):
        requests = receiver.on(f"/{path}-{tag}")
        assert requests
        for request in requests:
            assert request.headers["webhook-id"].startswith("msg_")
            assert verifies(request, own["secret"])
            assert not verifies(request, other["secret"])


def test_after_a_rotation_old_and_new_secrets_both_verify_during_the_grace(
    stack: dict[str, Any], receiver: Receiver
) -> None:
    api: TestClient = stack["api"]
    tag = uuid.uuid4().hex[:8]
    made = create_endpoint(api, f"{receiver.url}/rot-{tag}", event_types=["rotated"])
    rotated = api.post(f"/v1/endpoints/{made['id']}/rotate-secret", headers=AUTH).json()

    event_id = send_github(api, "rotated", f"rot-{tag}")

    settled(stack, lambda: receiver.on(f"/rot-{tag}"))
    [request] = receiver.on(f"/rot-{tag}")
    assert json.loads(request.body)["event_id"] == event_id
    assert verifies(request, rotated["secret"]) and verifies(request, made["secret"])
    assert len(request.headers["webhook-signature"].split()) == 2


def test_a_worker_sees_an_endpoint_disabled_after_it_was_sent_to(
    stack: dict[str, Any], receiver: Receiver
) -> None:
    api: TestClient = stack["api"]
    tag = uuid.uuid4().hex[:8]
    made = create_endpoint(api, f"{receiver.url}/toggle-{tag}", event_types=[f"toggle.{tag}"])
    send_github(api, f"toggle.{tag}", "first")
    settled(stack, lambda: receiver.on(f"/toggle-{tag}"))

    api.post(f"/v1/endpoints/{made['id']}/disable", headers=AUTH)
    second = send_github(api, f"toggle.{tag}", "second")

    view = settled(
        stack,
        lambda: (
            v
            if (v := api.get(f"/v1/events/{second}", headers=AUTH).json())["status"] != "received"
            and v["status"] != "processing"
            else None
        ),
    )
    assert view["status"] == "ignored" and view["deliveries"] == []
    assert [json.loads(r.body)["data"] for r in receiver.on(f"/toggle-{tag}")] == [
        {"marker": "first"}
    ]
