"""The metrics and `gateway status` of real processes over a Redis of their own: a running
`gateway api` scraped over HTTP, real workers (one killed), `gateway status` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded import EmbeddedRedis, free_port
from tasks.keys import Keys
from tasks.monitor import snapshot
from tests.conftest import AUTH, ROOT, Processes, api_ready, process_env, wait_for

pytestmark = pytest.mark.e2e

EMAIL_JOB = {"to": "a@example.com", "subject": "queued", "text": "no email worker runs here"}


@dataclass
class Stack:
    """An API process and a `default` worker on a Redis of their own."""

    url: str
    prefix: str
    base: str
    redis: redis.Redis
    procs: Processes

    def env(self, **extra: str) -> dict[str, str]:
        return process_env(self.url, self.prefix, **extra)

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = httpx.get(f"{self.base}/metrics", timeout=5)
        assert response.status_code == 200, response.text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    def gauge(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, frozenset(labels.items())), 0.0)

    def status(self) -> subprocess.CompletedProcess[str]:
        return gateway_status(self.env())


def gateway_status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gateway status` run as the operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def row(output: str, queue: str) -> list[str]:
    """The cells of ``queue``'s line of the status table."""
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [queue])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(server.url)
    procs = Processes(tmp_path_factory.mktemp("metrics"))
    prefix = f"metrics-{uuid.uuid4().hex[:6]}:"
    port = free_port()
    env = process_env(server.url, prefix)
    procs.start(["api", "--port", str(port)], env)
    procs.start(["worker", "default", "--concurrency", "2"], env)
    stack = Stack(server.url, prefix, f"http://127.0.0.1:{port}", client, procs)
    try:
        wait_for(lambda: api_ready(stack.base), timeout=30)
        wait_for(lambda: stack.gauge("gateway_workers_alive", queue="default") == 1, timeout=60)
        yield stack
    finally:
        procs.stop()
        client.close()
        server.stop()


def post_job(stack: Stack, kind: str, body: dict[str, object]) -> str:
    response = httpx.post(f"{stack.base}/v1/jobs/{kind}", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def job_status(stack: Stack, job_id: str) -> str:
    response = httpx.get(f"{stack.base}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
    return str(response.json()["status"])


def test_a_backlog_shows_in_the_scrape_and_in_gateway_status(stack: Stack) -> None:
    n = 12
    before = stack.scrape()
    ids = [post_job(stack, "email", EMAIL_JOB) for _ in range(n)]
    samples = stack.scrape()
    posted = ("gateway_http_requests_total", "/v1/jobs/email", "POST", "202")
    key = (
        posted[0],
        frozenset({("route", posted[1]), ("method", posted[2]), ("status", posted[3])}),
    )
    assert samples[key] - before.get(key, 0.0) == n
    assert samples[("gateway_queue_depth", frozenset({("queue", "email")}))] == n
    age = samples[("gateway_queue_oldest_age_seconds", frozenset({("queue", "email")}))]
    # the oldest message's age grows while nobody takes it
    wait_for(
        lambda: stack.gauge("gateway_queue_oldest_age_seconds", queue="email") > age + 0.5,
        timeout=10,
    )
    assert all(i not in httpx.get(f"{stack.base}/metrics").text for i in ids)

    result = stack.status()
    assert result.returncode == 0, result.stderr
    depth, oldest, workers = row(result.stdout, "email")[1:4]
    assert int(depth) == n and workers == "0" and oldest.endswith("s")
    assert float(oldest.rstrip("s")) >= age
    assert int(row(result.stdout, "default")[3]) >= 1  # the worker the stack runs
    assert "scheduled: 0" in result.stdout and "dead letters: 0" in result.stdout


def test_gateway_status_exits_1_when_redis_is_unreachable(stack: Stack) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = gateway_status(process_env(url, stack.prefix))
    assert result.returncode == 1
    assert "cannot read Redis at redis://:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_a_job_in_flight_shows_in_gateway_status(stack: Stack) -> None:
    job_id = post_job(stack, "echo", {"message": "slow", "sleep_ms": 4000})
    keys = Keys(stack.prefix)
    wait_for(lambda: job_status(stack, job_id) == "running", timeout=20)
    held = snapshot(stack.redis, keys, in_flight=True)
    assert next(q for q in held.queues if q.name == "default").in_flight == 1
    result = stack.status()
    assert row(result.stdout, "default")[4] == "1", result.stdout
    wait_for(lambda: job_status(stack, job_id) == "succeeded", timeout=20)


def test_dead_letters_are_counted_by_kind_and_replay_takes_them_off(stack: Stack) -> None:
    failing = {"message": "no", "fail_permanently": True}
    ids = [post_job(stack, "echo", failing) for _ in range(3)]
    wait_for(lambda: all(job_status(stack, i) == "failed" for i in ids), timeout=30)
    assert stack.gauge("gateway_dead_letters", kind="echo") == 3
    result = stack.status()
    assert "dead letters: 3 (echo 3)" in result.stdout, result.stdout
    replay = httpx.post(f"{stack.base}/v1/dead-letters/job:{ids[0]}/replay", headers=AUTH)
    assert replay.status_code < 300, replay.text
    # it fails again: 3 again, not 4, as the replay took it off the count
    wait_for(lambda: job_status(stack, ids[0]) == "failed", timeout=30)
    assert stack.gauge("gateway_dead_letters", kind="echo") == 3


def test_a_killed_worker_drops_out_of_workers_alive(stack: Stack) -> None:
    assert stack.gauge("gateway_workers_alive", queue="webhooks") == 0
    worker = stack.procs.start(["worker", "webhooks", "--concurrency", "2"], stack.env())
    wait_for(lambda: stack.gauge("gateway_workers_alive", queue="webhooks") == 1, timeout=30)
    assert stack.gauge("gateway_workers_alive", queue="default") == 1
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    # the liveness key lapses within its TTL (10 s) once nobody renews it
    wait_for(lambda: stack.gauge("gateway_workers_alive", queue="webhooks") == 0, timeout=30)
    assert stack.gauge("gateway_workers_alive", queue="default") == 1


def test_metrics_page_carries_no_secret(stack: Stack) -> None:
    page = httpx.get(f"{stack.base}/metrics").text
    assert AUTH["Authorization"].split()[1] not in page
    assert stack.prefix not in page


def test_an_api_of_several_processes_counts_every_request_in_every_scrape(stack: Stack) -> None:
    port = free_port()
    proc = stack.procs.start(["api", "--port", str(port), "--workers", "2"], stack.env())
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: api_ready(base), timeout=60)
    n = 40
    for _ in range(n):  # a connection each: the kernel spreads them over the processes
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    labels = frozenset({("route", "/healthz"), ("method", "GET"), ("status", "200")})
    for _ in range(6):  # whichever process answers the scrape, it reports all of them
        page = httpx.get(f"{base}/metrics", timeout=5)
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(page.text)
            for s in family.samples
        }
        assert samples[("gateway_http_requests_total", labels)] == n
        assert samples[("gateway_redis_up", frozenset())] == 1
    proc.terminate()
    proc.wait(20)
