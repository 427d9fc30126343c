"""A routing plan carried out by a real `webhooks` worker when one route's job is refused: the
other routes' deliveries and jobs are still made, the refused route says why, and the event ends
failed (tasks/routing.py plans it; tasks/webhooks.py carries it out and records it).
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

from gateway.main import create_app
from tasks.routing import delivery_id
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for

pytestmark = pytest.mark.e2e

SECRET = "e2e-routing-inbound-secret"
FORWARD = "http://127.0.0.1:9/never-delivered-here"  # no callbacks worker: it stays pending
SOURCES = f"""
[sources.gh]
scheme = "github"
secrets_env = ["E2E_ROUTING_SECRET"]

[[sources.gh.routes]]
events = ["push"]
forward = ["{FORWARD}"]

[[sources.gh.routes]]
events = ["push"]
job = {{ kind = "echo", event_key = "sleep_ms" }}  # the loader cannot know: the event is no int

[[sources.gh.routes]]
events = ["*"]
job = {{ kind = "echo", event_key = "message" }}
"""


@pytest.fixture(scope="module")
def api(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A webhooks worker and the API on a database of their own; loopback destinations allowed."""
    url = f"{redis_server}/7"
    redis.Redis.from_url(url).flushdb()
    prefix = f"whr-{uuid.uuid4().hex[:6]}:"
    tmp: Path = tmp_path_factory.mktemp("whr")
    sources = tmp / "sources.toml"
    sources.write_text(SOURCES)
    procs = Processes(tmp)
    env = process_env(
        url,
        prefix,
        WEBHOOK_SOURCES_FILE=str(sources),
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
    )
    procs.start(["worker", "webhooks", "--concurrency", "2"], env)
    settings = make_settings(
        url,
        prefix,
        webhook_sources_file=sources,
        outbound_allow_networks=["127.0.0.1/32"],
        outbound_allow_http=True,
    )
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("E2E_ROUTING_SECRET", SECRET)
            app = create_app(settings)
        with TestClient(app) as client:
            yield client, procs
    finally:
        procs.stop()


def test_a_refused_job_fails_its_route_and_the_others_still_run(api: Any) -> None:
    client, procs = api
    body = json.dumps({"ref": "refs/heads/main", "after": uuid.uuid4().hex}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    accepted = client.post(
        "/v1/webhooks/gh",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": str(uuid.uuid4()),
            "x-hub-signature-256": f"sha256={signature}",
        },
    )
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]

    def final() -> dict[str, Any] | None:
        view: dict[str, Any] = client.get(f"/v1/events/{event_id}", headers=AUTH).json()
        return view if view["status"] in ("routed", "ignored", "failed") else None

    try:
        view = wait_for(final, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None

    assert view["status"] == "failed"
    assert view["error"] == {"code": "route_failed", "detail": "1 route(s) failed"}
    forward_id = delivery_id(event_id, 0, FORWARD)
    [job] = view["jobs"]
    assert [d["id"] for d in view["deliveries"]] == [forward_id]
    assert view["deliveries"][0]["status"] == "pending"
    first, refused, started = view["routes"]
    assert first == {"route": 1, "events": ["push"], "deliveries": [forward_id]}
    assert refused["route"] == 2 and "job" not in refused
    assert refused["error"]["code"] == "job_refused"
    assert refused["error"]["detail"].startswith("sleep_ms: ")
    assert started == {"route": 3, "events": ["*"], "job": job["id"]}
    assert job["kind"] == "echo"
