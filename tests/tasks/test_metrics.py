"""The worker metrics' hooks: outcomes counted once each, status classes, a bounded host label."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tasks import metrics
from tasks.store import now_iso


def sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def fresh_hosts() -> Iterator[None]:
    saved = set(metrics._hosts)
    metrics._hosts.clear()
    yield
    metrics._hosts.clear()
    metrics._hosts.update(saved)


def test_a_jobs_attempts_and_final_outcome_are_counted_and_timed() -> None:
    job = {"id": "j", "kind": "echo", "attempts": 1, "created_at": now_iso()}
    before = {o: sample("gateway_jobs_total", kind="echo", outcome=o) for o in metrics.JOB_OUTCOMES}
    runs = sample("gateway_job_duration_seconds_count", kind="echo")
    waits = sample("gateway_job_queue_wait_seconds_count", kind="echo")
    lives = sample("gateway_end_to_end_seconds_count", kind="echo")

    metrics.job_claimed(job)
    metrics.job_retried(job)
    metrics.job_claimed({**job, "attempts": 2})  # a retry's wait is not a queue wait
    metrics.job_finished(job, "dead", {"code": "x", "detail": "y"})

    after = {o: sample("gateway_jobs_total", kind="echo", outcome=o) for o in metrics.JOB_OUTCOMES}
    assert {o: after[o] - before[o] for o in after} == {
        "succeeded": 0,
        "retried": 1,
        "failed": 0,
        "dead": 1,
    }
    assert sample("gateway_job_duration_seconds_count", kind="echo") - runs == 2
    assert sample("gateway_job_queue_wait_seconds_count", kind="echo") - waits == 1
    assert sample("gateway_end_to_end_seconds_count", kind="echo") - lives == 1


@pytest.mark.parametrize(
    ("status", "code", "outcome", "status_class"),
    [
        ("delivered", 204, "delivered", "2xx"),
        ("retrying", 503, "retried", "5xx"),
        ("failed", 410, "failed", "4xx"),
        ("dead", None, "dead", "none"),
    ],
)
def test_delivery_outcomes_by_status_class(
    status: str, code: int | None, outcome: str, status_class: str
) -> None:
    labels = {"outcome": outcome, "status_class": status_class}
    before = sample("gateway_deliveries_total", **labels)
    metrics.delivery_done("https://example.com/cb?token=x", status, code, 12.5)
    assert sample("gateway_deliveries_total", **labels) - before == 1


def test_the_host_label_keeps_the_first_hosts_and_calls_the_rest_other(fresh_hosts: None) -> None:
    hosts = [f"h{i}.example.com" for i in range(metrics.TOP_HOSTS + 5)]
    labels = [metrics.host_label(f"https://{h}/cb") for h in hosts]

    assert labels[: metrics.TOP_HOSTS] == hosts[: metrics.TOP_HOSTS]
    assert set(labels[metrics.TOP_HOSTS :]) == {"other"}
    assert metrics.host_label(f"https://{hosts[0].upper()}/again") == hosts[0]
    assert metrics.host_label("not a url") == "other"


def test_serving_metrics_on_a_taken_port_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        queue = f"q-{uuid.uuid4().hex[:4]}"
        metrics.serve(taken.getsockname()[1], [queue], 5)
    assert "cannot listen" in caplog.text
    assert sample("gateway_pool_slots", queue=queue) == 5


def test_a_served_port_answers_prometheus_text() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(port, ["default"], 4)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'gateway_pool_slots{queue="default"} 4.0' in text
    assert "gateway_jobs_total" in text and "_created" not in text
