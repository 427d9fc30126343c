"""docker-compose.yml, checked without Docker: its shape, then each service's command run as a plain
process (Redis's too), each made healthy by its own healthcheck command, the way compose runs them.

Substituted, as a container would differ from this machine: other services' host names become
loopback addresses, the API's port a free one, /data a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiosmtpd.controller import Controller

from gateway.embedded import free_port, redis_binary
from tasks.protocol import task_message
from tasks.queues import QUEUES
from tests.conftest import ROOT, Processes, wait_for
from tests.smtp_sink import Recorder

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OBSERVABILITY = ("prometheus", "grafana")  # the `observability` profile
THIRD_PARTY = ("redis", "mailpit", *OBSERVABILITY)  # not the gateway's image
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        value = env.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and not value:
            raise AssertionError(f"compose would refuse: {name}: {arg}")
        return value or ""

    return VARIABLE.sub(one, text)


def environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """The service's environment as compose would give it, from the shell's ``env``."""
    return {k: interpolate(str(v), env) for k, v in service.get("environment", {}).items()}


def test_redis_persists_never_evicts_and_has_a_memory_limit() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    # without maxmemory, noeviction never refuses anything: Redis grows until the kernel kills it
    assert "--maxmemory ${REDIS_MAXMEMORY:-" in command


def test_every_queue_has_its_own_worker_service() -> None:
    for queue in QUEUES:
        service = SERVICES[f"worker-{queue}"]
        assert service["command"][:3] == ["gateway", "worker", queue]
        assert "--pool" in service["command"] and "--concurrency" in service["command"]
    assert "prefork" in SERVICES["worker-files"]["command"]


def test_every_service_has_a_healthcheck_and_waits_for_a_healthy_redis() -> None:
    for name, service in SERVICES.items():
        assert service.get("healthcheck", {}).get("test"), name
        if name not in THIRD_PARTY:
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert SERVICES["api"]["command"][:2] == ["gateway", "api"]
    assert SERVICES["beat"]["command"] == ["gateway", "beat"]


def test_published_ports_listen_on_loopback_unless_bind_address_says_otherwise() -> None:
    published = [(n, p) for n, s in SERVICES.items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        assert interpolate(port, {}).startswith("127.0.0.1:"), name
        assert interpolate(port, {"BIND_ADDRESS": "0.0.0.0"}).startswith("0.0.0.0:"), name


def test_the_api_allows_dev_mode_on_its_container_address_explicitly() -> None:
    api = SERVICES["api"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert environment(api, {})["ALLOW_DEV_ON_PUBLIC"] == "true"
    # the other services keep the default: only the API binds a port
    assert "ALLOW_DEV_ON_PUBLIC" not in environment(SERVICES["beat"], {})


def test_the_email_worker_sends_to_the_dev_mail_catcher() -> None:
    worker = SERVICES["worker-email"]
    assert environment(worker, {})["SMTP_HOST"] == "mailpit"
    assert environment(worker, {"SMTP_HOST": "relay.example.com"})["SMTP_HOST"] == (
        "relay.example.com"
    )
    assert worker["depends_on"]["mailpit"]["condition"] == "service_healthy"


def start_redis_service(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """The redis service's command as a process; the image's defaults (port, /data) made local."""
    command = [interpolate(part, env) for part in SERVICES["redis"]["command"]]
    assert command[0] == "redis-server"
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    args = [redis_binary(), *command[1:], "--port", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        [*args, "--dir", str(tmp)], stdout=subprocess.DEVNULL, start_new_session=True
    )
    return proc, port


def healthy(
    service: dict[str, Any],
    env: dict[str, str],
    swap: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> bool:
    """Run the service's healthcheck command here: ``swap`` replaces container-only words,
    ``extra`` are arguments put after the program (redis-cli's port)."""
    test = list(service["healthcheck"]["test"])
    kind, parts = test[0], [interpolate(p, env) for p in test[1:]]
    for old, new in (swap or {}).items():
        parts = [p.replace(old, new) for p in parts]
    argv = ["sh", "-c", parts[0]] if kind == "CMD-SHELL" else [parts[0], *extra, *parts[1:]]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.fixture
def redis_service(tmp_path: Path) -> Iterator[int]:
    """Compose's redis, with its defaults, as a process: yields its port."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli (the redis healthcheck) is not installed")
    proc, port = start_redis_service(tmp_path / "redis", {})
    try:
        wait_for(lambda: healthy(SERVICES["redis"], {}, extra=("-p", str(port))), timeout=20)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_refuses_writes_when_full_at_a_chosen_maxmemory(
    redis_service: int, tmp_path: Path
) -> None:
    client = redis.Redis(port=redis_service)
    assert int(client.config_get("maxmemory")["maxmemory"]) == 512 * 1024 * 1024
    client.close()
    proc, port = start_redis_service(tmp_path / "small", {"REDIS_MAXMEMORY": "2mb"})
    small = redis.Redis(port=port)
    try:
        wait_for(lambda: _pings(small), timeout=20)
        assert int(small.config_get("maxmemory")["maxmemory"]) == 2 * 1024 * 1024
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for n in range(1000):
                small.set(f"k{n}", b"x" * 64 * 1024)
        assert small.dbsize() > 0  # nothing written before was evicted
        assert small.get("k0") == b"x" * 64 * 1024
    finally:
        small.close()
        proc.terminate()
        proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.e2e
def test_each_service_runs_as_a_process_and_becomes_healthy(
    redis_service: int, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{redis_service}/0"
    client = redis.Redis.from_url(url)
    sink = Recorder(port=free_port())
    smtp = Controller(sink, hostname="127.0.0.1", port=sink.port)
    smtp.start()
    procs = Processes(tmp_path)
    api_port = free_port()
    shell = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOSTNAME": socket.gethostname(),  # what a container's HOSTNAME holds: %h of the worker
    }
    envs: dict[str, dict[str, str]] = {}
    try:
        for name, service in SERVICES.items():
            if name in THIRD_PARTY:
                continue
            env = {**shell, **environment(service, shell)}
            env.update(REDIS_URL=url, DATA_DIR=str(tmp_path / "data"))
            if name == "worker-email":
                env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink.port))
            command = [interpolate(part, env) for part in service["command"]]
            assert command[0] == "gateway"
            if name == "api":  # loopback here: this machine is not a container
                command[command.index("--port") + 1] = str(api_port)
                command[command.index("--host") + 1] = "127.0.0.1"
            envs[name] = env
            procs.start(command[1:], env)

        swap = {"api": {"8000": str(api_port)}}
        for name in envs:
            service = SERVICES[name]
            wait_for(
                lambda s=service, n=name: healthy(s, envs[n], swap.get(n)), timeout=120, interval=1
            )

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
        smtp.stop()
        client.close()


def test_beat_healthcheck_fails_without_a_recent_tick(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    command = SERVICES["beat"]["healthcheck"]["test"][1:]
    argv = [sys.executable, "-m", "gateway.cli", *command[1:]]
    assert subprocess.run(argv, env=env, check=False, capture_output=True).returncode == 1
    (tmp_path / "beat-alive").touch()
    assert subprocess.run(argv, env=env, check=False, capture_output=True).returncode == 0
    os.utime(tmp_path / "beat-alive", (0, 0))  # a beat that stopped ticking long ago
    assert subprocess.run(argv, env=env, check=False, capture_output=True).returncode == 1


# --- the observability profile -----------------------------------------------------------------

# Metric families the workers export (the worker metrics of issue 12, made by the workers, not the
# API: the one list of their names here; counters without their _total suffix).
WORKER_METRICS = frozenset(
    {
        "gateway_jobs",
        "gateway_job_duration_seconds",
        "gateway_deliveries",
        "gateway_end_to_end_seconds",
    }
)
DASHBOARD = ROOT / "deploy/grafana/dashboards/gateway.json"
METRIC_NAME = re.compile(r"\bgateway_[a-z_]+")


def test_the_observability_profile_adds_prometheus_and_grafana_pinned_and_on_loopback() -> None:
    for name in OBSERVABILITY:
        service = SERVICES[name]
        assert service["profiles"] == ["observability"], name
        tag = service["image"].partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a version, not {tag!r}"
        for port in service["ports"]:
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), name
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):  # a file of this repository, mounted read-only
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
                assert volume.endswith(":ro"), name
    # the gateway's own services stay in the default profile: `docker compose up` is unchanged
    assert [n for n, s in SERVICES.items() if "profiles" in s] == list(OBSERVABILITY)


def test_prometheus_scrapes_the_api_and_every_worker_service() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    api_port = SERVICES["api"]["ports"][0].rsplit(":", 1)[1]
    assert f"api:{api_port}" in targets
    for queue in QUEUES:
        assert f"worker-{queue}:9100" in targets, queue
    for target in targets:
        assert target.split(":")[0] in {*SERVICES, "localhost"}, target


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard() -> None:
    base = ROOT / "deploy/grafana/provisioning"
    [source] = yaml.safe_load((base / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((base / "dashboards/gateway.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"])
    # the provider's folder is where compose mounts the repository's dashboards
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert DASHBOARD.parent.name == "dashboards"
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels with queries (rows hold none)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [p for p in panels if p["type"] != "row"]


def exported_families(client: Any) -> set[str]:
    """Metric families of a running API's registry (the queue gauges read from a real Redis)."""
    assert client.get("/metrics").status_code == 200
    return {family.name for family in client.app.state.metrics.registry.collect()}


def test_every_dashboard_query_names_a_metric_that_is_exported(client: Any) -> None:
    api = exported_families(client)
    assert "gateway_queue_depth" in api  # Redis answered: the queue collector's families too
    known = api | WORKER_METRICS
    seen = set()
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = METRIC_NAME.findall(target["expr"])
            assert names, (panel["title"], target["expr"])
            for name in names:
                family = re.sub(r"_(total|bucket|count|sum)$", "", name)
                assert family in known, f"{panel['title']}: {name} is exported by nothing"
                seen.add(family)
    # the views: queues, rates, errors, latency, dead letters, workers, worker metrics
    assert {
        "gateway_queue_depth",
        "gateway_queue_oldest_age_seconds",
        "gateway_http_requests",
        "gateway_http_request_duration_seconds",
        "gateway_dead_letters",
        "gateway_workers_alive",
    } | WORKER_METRICS <= seen
