"""Trace context end to end through real workers to a real receiver on loopback: a job's or a
webhook's ``traceparent`` is kept on its record and goes out on its callback and forwards with the
same trace id and a new span id; without one (or with a malformed one) the gateway starts a trace.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.receiver import Received, Receiver

pytestmark = pytest.mark.e2e

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SECRET = "e2e-trace-inbound-secret"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[tuple[TestClient, redis.Redis, str, Processes]]:
    """Workers for default, callbacks and webhooks and the API; a source whose route forwards
    the event to the receiver and starts an echo job with a callback to it."""
    url = f"{redis_server}/4"
    store = redis.Redis.from_url(url)
    store.flushdb()
    prefix = f"trace-{uuid.uuid4().hex[:6]}:"
    tmp: Path = tmp_path_factory.mktemp("trace")
    sources = tmp / "sources.toml"
    sources.write_text(
        f"""
[sources.gh]
scheme = "github"
secrets_env = ["E2E_TRACE_SECRET"]

[[sources.gh.routes]]
events = ["push"]
forward = ["{receiver.url}/forward"]
job = {{ kind = "echo", event_key = "message", callback_url = "{receiver.url}/routed" }}
"""
    )
    procs = Processes(tmp)
    loopback = {"OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32", "OUTBOUND_ALLOW_HTTP": "true"}
    worker_env = process_env(url, prefix, WEBHOOK_SOURCES_FILE=str(sources), **loopback)
    for queue in ("default", "callbacks", "webhooks"):
        procs.start(["worker", queue, "--concurrency", "2"], worker_env)
    settings = make_settings(
        url,
        prefix,
        webhook_sources_file=sources,
        outbound_allow_networks=["127.0.0.1/32"],
        outbound_allow_http=True,
    )
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("E2E_TRACE_SECRET", SECRET)
            app = create_app(settings)
        with TestClient(app) as client:
            yield client, store, prefix, procs
    finally:
        procs.stop()


def submit(client: TestClient, path: str, receiver: Receiver, headers: dict[str, str]) -> Any:
    marker = uuid.uuid4().hex
    body = {"message": marker, "callback_url": f"{receiver.url}{path}"}
    response = client.post("/v1/jobs/echo", json=body, headers={**AUTH, **headers})
    assert response.status_code == 202, response.text
    return response, marker


def callback(receiver: Receiver, path: str, marker: str, procs: Processes) -> Received:
    def arrived() -> list[Received]:
        return [r for r in receiver.on(path) if marker.encode() in r.body]

    try:
        [request] = wait_for(arrived, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None
    return request


def ids(traceparent: str | None) -> tuple[str, str, str]:
    found = TRACEPARENT.fullmatch(traceparent or "")
    assert found is not None, traceparent
    trace_id, span_id, flags = found.groups()
    assert trace_id != "0" * 32 and span_id != "0" * 16
    return trace_id, span_id, flags


def record(store: redis.Redis, key: str) -> dict[str, str]:
    raw = store.hgetall(key)
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_jobs_traceparent_is_kept_and_its_callback_carries_the_trace_with_a_new_span(
    env: Any, receiver: Receiver
) -> None:
    client, store, prefix, procs = env
    sent = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=opaque-1"}
    response, marker = submit(client, "/traced", receiver, sent)
    job_id = response.json()["id"]

    job = record(store, f"{prefix}job:{job_id}")
    trace_id, ingest_span, _ = ids(job["traceparent"])
    assert trace_id == CALLER_TRACE and ingest_span != CALLER_SPAN
    assert job["tracestate"] == "vendor=opaque-1"
    assert response.headers["traceresponse"] == job["traceparent"]

    request = callback(receiver, "/traced", marker, procs)
    out_trace, out_span, flags = ids(request.headers.get("traceparent"))
    assert out_trace == CALLER_TRACE and flags == "01"
    assert out_span not in (CALLER_SPAN, ingest_span)
    assert request.headers["tracestate"] == "vendor=opaque-1"
    [delivery] = client.get(f"/v1/jobs/{job_id}/deliveries", headers=AUTH).json()
    # the delivery keeps the span of the job's run that made it: neither ingest nor the attempt
    kept = record(store, f"{prefix}delivery:{delivery['id']}")
    assert ids(kept["traceparent"])[0] == CALLER_TRACE
    assert ids(kept["traceparent"])[1] not in (ingest_span, out_span)


def test_a_job_without_traceparent_gets_a_new_trace_its_callback_carries(
    env: Any, receiver: Receiver
) -> None:
    client, store, prefix, procs = env
    first, marker = submit(client, "/untraced", receiver, {})
    second, _ = submit(client, "/untraced-2", receiver, {})

    job = record(store, f"{prefix}job:{first.json()['id']}")
    trace_id, ingest_span, _ = ids(job["traceparent"])
    assert job["tracestate"] == ""
    assert ids(second.headers["traceresponse"])[0] != trace_id  # one trace per submission

    request = callback(receiver, "/untraced", marker, procs)
    out_trace, out_span, _ = ids(request.headers.get("traceparent"))
    assert out_trace == trace_id and out_span != ingest_span
    assert "tracestate" not in request.headers


@pytest.mark.parametrize(
    "malformed",
    [
        f"00-{'0' * 32}-{CALLER_SPAN}-01",
        f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",
        "not a traceparent",
    ],
)
def test_a_malformed_traceparent_is_ignored_and_a_new_trace_started(
    env: Any, receiver: Receiver, malformed: str
) -> None:
    client, store, prefix, _ = env
    sent = {"traceparent": malformed, "tracestate": "vendor=dropped"}
    response, _ = submit(client, "/malformed", receiver, sent)

    job = record(store, f"{prefix}job:{response.json()['id']}")
    trace_id, _, _ = ids(job["traceparent"])
    assert trace_id not in (CALLER_TRACE, CALLER_TRACE.upper(), "0" * 32)
    assert job["tracestate"] == ""  # a tracestate without a valid traceparent goes too


def test_a_webhooks_trace_reaches_the_job_its_route_starts_and_the_forward(
    env: Any, receiver: Receiver
) -> None:
    client, store, prefix, procs = env
    marker = uuid.uuid4().hex
    body = json.dumps({"ref": "refs/heads/main", "message": marker}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    accepted = client.post(
        "/v1/webhooks/gh",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": str(uuid.uuid4()),
            "x-hub-signature-256": f"sha256={signature}",
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00",
            "tracestate": "gh=1",
        },
    )
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]
    event = record(store, f"{prefix}event:{event_id}")
    assert ids(event["traceparent"])[0] == CALLER_TRACE and event["tracestate"] == "gh=1"

    forward = callback(receiver, "/forward", marker, procs)
    fwd_trace, fwd_span, flags = ids(forward.headers.get("traceparent"))
    assert (fwd_trace, flags) == (CALLER_TRACE, "00") and fwd_span != CALLER_SPAN
    assert forward.headers["tracestate"] == "gh=1"

    def routed_job() -> str | None:
        view = client.get(f"/v1/events/{event_id}", headers=AUTH).json()
        return view["jobs"][0]["id"] if view["jobs"] else None

    job = record(store, f"{prefix}job:{wait_for(routed_job, timeout=30)}")
    assert ids(job["traceparent"])[0] == CALLER_TRACE and job["tracestate"] == "gh=1"
    routed = callback(receiver, "/routed", marker, procs)
    routed_trace, routed_span, _ = ids(routed.headers.get("traceparent"))
    assert routed_trace == CALLER_TRACE and routed_span not in (CALLER_SPAN, fwd_span)
