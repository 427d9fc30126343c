"""Workers' own metrics, scraped from real worker processes: after N jobs the counters moved by N,
in each pool (threads, the loop pool's callbacks, prefork children summed by their parent)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded import free_port
from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.receiver import Receiver

FINAL = ("succeeded", "failed", "dead")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample a worker serves: (name, labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def served(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Workers on a database of their own: default on threads, callbacks on the loop pool."""
    url = f"{redis_server}/4"
    redis.Redis.from_url(url).flushdb()
    prefix = f"metrics-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path_factory.mktemp("worker-metrics"))
    env = process_env(
        url,
        prefix,
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        OUTBOUND_TIMEOUT_SECONDS="1",
        RETRY_POLICIES='{"callbacks": {"max_attempts": 2, "schedule": [0.2]}}',
    )
    ports = {"default": free_port(), "callbacks": free_port()}
    procs.start(
        ["worker", "default", "--concurrency", "3", "--metrics-port", str(ports["default"])], env
    )
    procs.start(
        ["worker", "callbacks", "--concurrency", "7", "--metrics-port", str(ports["callbacks"])],
        env,
    )
    try:
        for port in ports.values():
            wait_for(lambda port=port: served(port), timeout=30)
        yield {"url": url, "prefix": prefix, "procs": procs, "ports": ports, "env": env}
    finally:
        procs.stop()


@pytest.fixture
def api(stack: dict[str, Any]) -> Iterator[TestClient]:
    settings = make_settings(
        stack["url"],
        stack["prefix"],
        outbound_allow_networks=["127.0.0.1/32"],
        outbound_allow_http=True,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def run_jobs(
    api: TestClient, stack: dict[str, Any], bodies: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    ids = []
    for body in bodies:
        accepted = api.post("/v1/jobs/echo", json=body, headers=AUTH)
        assert accepted.status_code == 202, accepted.text
        ids.append(accepted.json()["id"])

    def all_final() -> list[dict[str, Any]] | None:
        views = [api.get(f"/v1/jobs/{i}", headers=AUTH).json() for i in ids]
        return views if all(v["status"] in FINAL for v in views) else None

    try:
        return wait_for(all_final, timeout=40)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack['procs'].logs()}") from None


def test_job_counters_move_by_the_jobs_run(api: TestClient, stack: dict[str, Any]) -> None:
    port = stack["ports"]["default"]
    before = scrape(port)
    views = run_jobs(
        api,
        stack,
        [{"message": i} for i in range(5)]
        + [{"fail_attempts": 1}] * 2
        + [{"fail_permanently": True}] * 3,
    )
    assert [v["status"] for v in views].count("succeeded") == 7

    def moved() -> dict[Any, float] | None:
        after = scrape(port)
        done = value(after, "gateway_jobs_total", kind="echo", outcome="succeeded")
        return (
            after
            if done - value(before, "gateway_jobs_total", kind="echo", outcome="succeeded") >= 7
            else None
        )

    after = wait_for(moved, timeout=10)
    delta = {
        outcome: value(after, "gateway_jobs_total", kind="echo", outcome=outcome)
        - value(before, "gateway_jobs_total", kind="echo", outcome=outcome)
        for outcome in ("succeeded", "retried", "failed", "dead")
    }
    assert delta == {"succeeded": 7, "retried": 2, "failed": 3, "dead": 0}
    # one run time per attempt (12), one wait per first attempt (10), one whole life per job (10)
    runs = value(after, "gateway_job_duration_seconds_count", kind="echo") - value(
        before, "gateway_job_duration_seconds_count", kind="echo"
    )
    assert runs == 12
    for name in ("gateway_job_queue_wait_seconds_count", "gateway_end_to_end_seconds_count"):
        assert value(after, name, kind="echo") - value(before, name, kind="echo") == 10
    assert value(after, "gateway_pool_slots", queue="default") == 3
    assert value(after, "gateway_in_flight", queue="default") == 0


def test_in_flight_counts_the_jobs_running_now(api: TestClient, stack: dict[str, Any]) -> None:
    port = stack["ports"]["default"]
    ids = [
        api.post("/v1/jobs/echo", json={"sleep_ms": 3000}, headers=AUTH).json()["id"]
        for _ in range(2)
    ]
    wait_for(lambda: value(scrape(port), "gateway_in_flight", queue="default") == 2, timeout=10)
    for job_id in ids:
        wait_for(
            lambda job_id=job_id: (
                api.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"] == "succeeded"
            ),
            timeout=20,
        )
    wait_for(lambda: value(scrape(port), "gateway_in_flight", queue="default") == 0, timeout=10)


def test_delivery_counters_by_outcome_status_class_and_bounded_host(
    api: TestClient, stack: dict[str, Any]
) -> None:
    receiver = Receiver().start()
    try:
        port = stack["ports"]["callbacks"]
        before = scrape(port)
        # two delivered (2xx), one that answers 500 twice (retried, then dead: 5xx)
        run_jobs(
            api,
            stack,
            [
                {"callback_url": f"{receiver.url}/ok?n=1"},
                {"callback_url": f"{receiver.url}/ok?n=2"},
                {"callback_url": f"{receiver.url}/flaky?fail=5&n={uuid.uuid4().hex}"},
            ],
        )

        def counted() -> dict[Any, float] | None:
            after = scrape(port)
            dead = value(after, "gateway_deliveries_total", outcome="dead", status_class="5xx")
            return (
                after
                if dead
                - value(before, "gateway_deliveries_total", outcome="dead", status_class="5xx")
                else None
            )

        after = wait_for(counted, timeout=30)
    finally:
        receiver.stop()

    def delta(outcome: str, status_class: str) -> float:
        return value(
            after, "gateway_deliveries_total", outcome=outcome, status_class=status_class
        ) - value(before, "gateway_deliveries_total", outcome=outcome, status_class=status_class)

    assert delta("delivered", "2xx") == 2
    assert delta("retried", "5xx") == 1 and delta("dead", "5xx") == 1
    assert value(after, "gateway_delivery_duration_seconds_count", host="127.0.0.1") >= 4
    assert value(after, "gateway_pool_slots", queue="callbacks") == 7


def test_prefork_children_are_counted_by_their_parent(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # a database of its own: this worker is the only consumer of its default queue
    url = f"{redis_server}/5"
    redis.Redis.from_url(url).flushdb()
    prefix = f"prefork-{uuid.uuid4().hex[:6]}:"
    procs = Processes(tmp_path_factory.mktemp("prefork-metrics"))
    port = free_port()
    args = ["worker", "default", "--pool", "prefork", "--concurrency", "2"]
    procs.start([*args, "--metrics-port", str(port)], process_env(url, prefix))
    stack = {"procs": procs}
    try:
        wait_for(lambda: served(port), timeout=30)
        with TestClient(create_app(make_settings(url, prefix))) as api:
            run_jobs(api, stack, [{"message": i, "sleep_ms": 20} for i in range(12)])

        def seen() -> dict[Any, float] | None:
            after = scrape(port)
            done = value(after, "gateway_jobs_total", kind="echo", outcome="succeeded")
            return after if done == 12 else None

        after = wait_for(seen, timeout=10)

        # a child killed mid-task never says so: its in-flight count goes with it all the same
        with TestClient(create_app(make_settings(url, prefix))) as api:
            api.post("/v1/jobs/echo", json={"sleep_ms": 3000}, headers=AUTH)
        wait_for(lambda: value(scrape(port), "gateway_in_flight", queue="default") == 1, timeout=10)
        worker_pid = procs.children[0][0].pid
        children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        # (the job goes back and runs again on a new child: in flight once more, then done)
        wait_for(lambda: value(scrape(port), "gateway_in_flight", queue="default") == 0, timeout=30)
    finally:
        procs.stop()
    # the 12 runs happened in the two children; the parent serves their sum
    assert value(after, "gateway_job_duration_seconds_count", kind="echo") == 12
    assert value(after, "gateway_in_flight", queue="default") == 0
    assert value(after, "gateway_pool_slots", queue="default") == 2


def test_gateway_dev_gives_each_worker_its_own_metrics_port() -> None:
    from gateway.dev import children_for

    def ports(base: int) -> list[str]:
        workers = [c for c in children_for("127.0.0.1", 8000, base) if c.name.startswith("worker")]
        return [c.command[c.command.index("--metrics-port") + 1] for c in workers]

    assert ports(9100) == ["9100", "9101", "9102", "9103", "9104", "9105"]
    assert ports(0) == ["0"] * 6  # off stays off for every worker
