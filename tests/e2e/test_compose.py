"""docker-compose.yml, checked without Docker: its shape, then each service's command run as a plain
process against real Redis, the way the containers would run it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from gateway.embedded import free_port
from tasks.protocol import task_message
from tasks.queues import QUEUES
from tests.conftest import ROOT, Processes, api_ready, process_env, wait_for

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
# Services that are not the gateway's own image (no `gateway` command to run as a process).
THIRD_PARTY = ("redis", "mailpit")


def test_redis_persists_and_never_evicts() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "healthcheck" in SERVICES["redis"]


def test_every_queue_has_its_own_worker_service() -> None:
    for queue in QUEUES:
        service = SERVICES[f"worker-{queue}"]
        assert service["command"][:3] == ["gateway", "worker", queue]
        assert "--pool" in service["command"] and "--concurrency" in service["command"]
    assert "prefork" in SERVICES["worker-files"]["command"]


def test_services_wait_for_a_healthy_redis_and_have_healthchecks() -> None:
    for name, service in SERVICES.items():
        if name in THIRD_PARTY:
            continue
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        if name != "beat":
            assert "healthcheck" in service, name
    assert SERVICES["api"]["command"][:2] == ["gateway", "api"]
    assert SERVICES["beat"]["command"] == ["gateway", "beat"]
    assert "healthcheck" in SERVICES["mailpit"]


def test_the_email_worker_sends_to_the_dev_mail_catcher() -> None:
    worker = SERVICES["worker-email"]
    assert worker["environment"]["SMTP_HOST"] == "${SMTP_HOST:-mailpit}"
    assert worker["depends_on"]["mailpit"]["condition"] == "service_healthy"


@pytest.mark.e2e
def test_each_service_command_runs_as_a_process(redis_server: str, tmp_path: Path) -> None:
    url = f"{redis_server}/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    procs = Processes(tmp_path)
    prefix = f"compose-{uuid.uuid4().hex[:6]}:"
    port = free_port()
    try:
        for name, service in SERVICES.items():
            if name in THIRD_PARTY:
                continue
            command = list(service["command"])
            assert command[0] == "gateway"
            if name == "api":
                command[command.index("--port") + 1] = str(port)
                command[command.index("--host") + 1] = "127.0.0.1"
            env = process_env(url, prefix, DATA_DIR=str(tmp_path / "data"))
            procs.start(command[1:], env)

        wait_for(lambda: api_ready(f"http://127.0.0.1:{port}"), timeout=60)
        # a task on every queue: each worker service must take the one on its own queue
        ids = {}
        for queue in QUEUES:
            task_id = f"compose-{queue}-{uuid.uuid4().hex[:6]}"
            client.lpush(
                queue, task_message("tasks.add", task_id, queue, [20, 22], ignore_result=False)
            )
            ids[queue] = task_id
        for queue, task_id in ids.items():
            meta = wait_for(lambda t=task_id: client.get(f"celery-task-meta-{t}"), timeout=60)
            assert json.loads(meta)["result"] == 42, queue
        for proc, log in procs.children:
            assert proc.poll() is None, log.read_text()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None
    finally:
        procs.stop()
        client.close()
