"""GET /metrics over the app with a real Redis: request counters by route template, webhook
outcomes, queue gauges read from real messages, and a scrape that survives Redis being down."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded import free_port
from gateway.main import create_app
from tasks.deliveries import add_delivery
from tasks.keys import Keys
from tasks.protocol import task_message
from tasks.queues import QUEUES
from tests.conftest import AUTH, make_settings, wait_for
from tests.gateway.test_redis_down import silent_server  # noqa: F401 (a fixture)

GH_SECRET = "metrics-test-github-secret"
SOURCES = """
[sources.gh]
scheme = "github"
secrets_env = ["METRICS_TEST_GH_SECRET"]
"""


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics, by (name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value, 0 if absent (a counter not yet moved has no sample)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def hooks(
    quiet_redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app with one GitHub-style webhook source, on the quiet database (no workers)."""
    monkeypatch.setenv("METRICS_TEST_GH_SECRET", GH_SECRET)
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    redis.Redis.from_url(quiet_redis_url).flushdb()
    settings = make_settings(quiet_redis_url, prefix, webhook_sources_file=path)
    with TestClient(create_app(settings)) as client:
        yield client


def github(body: bytes, delivery: str, secret: str = GH_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "content-type": "application/json",
        "x-hub-signature-256": f"sha256={digest}",
        "x-github-event": "push",
        "x-github-delivery": delivery,
    }


def test_requests_are_counted_by_route_template_never_by_raw_path(client: TestClient) -> None:
    before = scrape(client)
    ids = []
    for i in range(7):
        response = client.post("/v1/jobs/echo", json={"message": f"m{i}"}, headers=AUTH)
        assert response.status_code == 202
        ids.append(response.json()["id"])
    for job_id in ids[:3]:
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 200
    assert client.get("/v1/jobs/no-such-job", headers=AUTH).status_code == 404
    assert client.get("/nowhere/at/all").status_code == 404
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "gateway_http_requests_total"
    assert moved(total, route="/v1/jobs/echo", method="POST", status="202") == 7
    assert moved(total, route="/v1/jobs/{job_id}", method="GET", status="200") == 3
    assert moved(total, route="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert moved(total, route="unmatched", method="GET", status="404") == 1
    hist = "gateway_http_request_duration_seconds_count"
    assert moved(hist, route="/v1/jobs/echo") == 7
    assert moved(hist, route="/v1/jobs/{job_id}") == 4
    page = client.get("/metrics").text
    for job_id in ids:
        assert job_id not in page
    assert "no-such-job" not in page and "/nowhere" not in page


def test_unknown_methods_share_one_label(client: TestClient) -> None:
    for method in ("BREW", "WHEN", "FOO"):
        client.request(method, "/healthz")
    samples = scrape(client)
    methods = {
        dict(labels)["method"] for name, labels in samples if name == "gateway_http_requests_total"
    }
    assert methods <= {"GET", "POST", "other"}
    assert (
        value(
            samples, "gateway_http_requests_total", route="/healthz", method="other", status="405"
        )
        == 3
    )


def test_webhook_outcomes_are_counted_by_configured_source(hooks: TestClient) -> None:
    body = json.dumps({"ref": "main"}).encode()
    name = "gateway_webhooks_received_total"
    before = scrape(hooks)
    assert (
        hooks.post("/v1/webhooks/gh", content=body, headers=github(body, "d-1")).status_code == 202
    )
    assert (
        hooks.post("/v1/webhooks/gh", content=body, headers=github(body, "d-1")).status_code == 200
    )
    bad = github(body, "d-2", secret="not-the-secret")
    for _ in range(3):
        assert hooks.post("/v1/webhooks/gh", content=body, headers=bad).status_code == 401
    assert hooks.post("/v1/webhooks/mystery", content=body, headers=bad).status_code == 404
    after = scrape(hooks)

    def moved(**labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(source="gh", outcome="accepted") == 1
    # the accepted event waits on the webhooks queue, dated by the event's received_at
    assert value(after, "gateway_queue_depth", queue="webhooks") == 1
    event_age = after.get(("gateway_queue_oldest_age_seconds", frozenset({("queue", "webhooks")})))
    assert event_age is not None and 0 <= event_age < 30
    assert moved(source="gh", outcome="duplicate") == 1
    assert moved(source="gh", outcome="bad_signature") == 3
    # a source that is not configured never becomes a label of its own
    assert moved(source="unknown", outcome="unknown_source") == 1
    assert not any(dict(labels).get("source") == "mystery" for _, labels in after)


def test_a_backlog_shows_as_depth_and_a_growing_oldest_age(
    client: TestClient, quiet_redis: redis.Redis
) -> None:
    for i in range(5):
        assert (
            client.post("/v1/jobs/echo", json={"message": str(i)}, headers=AUTH).status_code == 202
        )
    first = scrape(client)
    assert value(first, "gateway_redis_up") == 1
    assert value(first, "gateway_queue_depth", queue="default") == 5
    for queue in QUEUES:  # every queue reports, empty ones with depth and age 0
        assert ("gateway_queue_depth", frozenset({("queue", queue)})) in first
        if queue != "default":
            assert value(first, "gateway_queue_oldest_age_seconds", queue=queue) == 0
            assert value(first, "gateway_workers_alive", queue=queue) == 0
    age = value(first, "gateway_queue_oldest_age_seconds", queue="default")
    assert 0 <= age < 30
    wait_for(
        lambda: (
            value(scrape(client), "gateway_queue_oldest_age_seconds", queue="default") > age + 0.2
        ),
        timeout=5,
    )
    assert quiet_redis.llen("default") == 5


def test_schedule_count_and_lag(client: TestClient, quiet_redis: redis.Redis, prefix: str) -> None:
    response = client.post(
        "/v1/jobs/echo", json={"message": "later", "delay_seconds": 3600}, headers=AUTH
    )
    assert response.status_code == 202
    samples = scrape(client)
    assert value(samples, "gateway_scheduled_jobs") == 1
    assert value(samples, "gateway_schedule_lag_seconds") == 0  # not due yet
    # an entry due 30 s ago that no mover has taken (no worker runs here): 30 s late
    quiet_redis.zadd(Keys(prefix).schedule, {"default\n{}": time.time() - 30})
    samples = scrape(client)
    assert value(samples, "gateway_scheduled_jobs") == 2
    assert 30 <= value(samples, "gateway_schedule_lag_seconds") < 60


def test_dead_letters_by_kind_come_from_their_counters(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    quiet_redis.hset(Keys(prefix).dead_letter_counts, mapping={"echo": 3, "callback": 1})
    samples = scrape(client)
    assert value(samples, "gateway_dead_letters", kind="echo") == 3
    assert value(samples, "gateway_dead_letters", kind="callback") == 1


@pytest.mark.parametrize("down", ["refused", "hanging"])
def test_redis_down_still_serves_the_page_quickly(
    down: str,
    silent_server: int,  # noqa: F811 (the fixture imported above)
) -> None:
    port = free_port() if down == "refused" else silent_server
    settings = make_settings(f"redis://127.0.0.1:{port}/0", "gwdown:")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        started = time.monotonic()
        samples = scrape(client)
        assert time.monotonic() - started < 2
    assert value(samples, "gateway_redis_up") == 0
    assert (
        value(samples, "gateway_http_requests_total", route="/healthz", method="GET", status="200")
        == 1
    )
    assert not any(name == "gateway_queue_depth" for name, _ in samples)


def test_metrics_can_be_turned_off(quiet_redis_url: str, prefix: str) -> None:
    settings = make_settings(quiet_redis_url, prefix, metrics_enabled=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 404


def test_metrics_is_not_in_the_openapi_document(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def test_oldest_age_is_read_from_the_record_of_the_oldest_message(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    pipe = quiet_redis.pipeline()
    delivery = add_delivery(
        pipe, keys, url="https://example.com/h", body={}, parent="job:x", owner="o",
        max_attempts=3, ttl=600,
    )  # fmt: skip
    pipe.execute()
    quiet_redis.hset(keys.delivery(delivery), "created_at", iso(time.time() - 60))
    age = value(scrape(client), "gateway_queue_oldest_age_seconds", queue="callbacks")
    assert 60 <= age < 90
    # a retried delivery waits from its due time, not from its creation
    quiet_redis.hset(keys.delivery(delivery), "next_attempt_at", iso(time.time() - 5))
    age = value(scrape(client), "gateway_queue_oldest_age_seconds", queue="callbacks")
    assert 5 <= age < 30
    # a plain task has no record to date it by: counted, not aged
    quiet_redis.lpush("default", task_message("tasks.add", "plain-1", "default", [1, 2]))
    samples = scrape(client)
    assert value(samples, "gateway_queue_depth", queue="default") == 1
    assert ("gateway_queue_oldest_age_seconds", frozenset({("queue", "default")})) not in samples


def test_a_request_that_raises_is_counted_as_the_500_it_answers(
    quiet_redis_url: str, prefix: str
) -> None:
    async def broken(thing: str) -> Any:
        raise RuntimeError(f"a bug in {thing}")

    app = create_app(make_settings(quiet_redis_url, prefix))
    app.add_api_route("/v1/broken/{thing}", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/broken/x").status_code == 500
        samples = scrape(client)
    labels = {"route": "/v1/broken/{thing}", "method": "GET", "status": "500"}
    assert value(samples, "gateway_http_requests_total", **labels) == 1


def test_scrapes_are_counted_under_their_own_route(client: TestClient) -> None:
    scrape(client)
    samples = scrape(client)
    labels = {"route": "/metrics", "method": "GET", "status": "200"}
    assert value(samples, "gateway_http_requests_total", **labels) >= 1
