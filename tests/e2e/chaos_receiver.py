"""The chaos suite's callback receiver, a process of its own: an aiohttp server on loopback that
verifies every request with `standardwebhooks` and appends one JSON line per request to a file.

A process, not a thread of the test: thousands of callbacks and forwards arrive at once when it
comes back up, and a threaded server inside the test's process would share one GIL with the
client threads and slow the very deliveries being measured. Stopping it is taking it down.

    python -m tests.e2e.chaos_receiver PORT OUT_FILE DELAY_SECONDS   (secret in CHAOS_SIGNING)

ReceiverProcess is the test's handle on it: start, take down, read what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from gateway.embedded import free_port

# the repository (tests.conftest has it too, but importing that here would load the whole app)
ROOT = Path(__file__).resolve().parents[2]


def make_app(out_path: str, delay: float, secret: str) -> web.Application:
    """Answer 200 after ``delay`` s to every POST, recording (path, webhook-id, subject, ok)."""
    verifier = Webhook(secret)
    out = open(out_path, "a", buffering=1)  # open for the app's lifetime

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        line: dict[str, object] = {
            "path": request.path,
            "id": request.headers.get("webhook-id"),
            "subject": None,
        }
        try:
            payload = verifier.verify(body, dict(request.headers))
            subject = payload["event_id"] if request.path == "/fwd" else payload["data"]["id"]
            line.update(subject=str(subject), ok=True)
        except Exception as exc:  # a failure is a finding: recorded
            line.update(ok=False, error=repr(exc))
        out.write(json.dumps(line) + "\n")
        await asyncio.sleep(delay)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    return app


@dataclass
class Seen:
    """What the receiver saw for one webhook-id."""

    path: str
    subject: str  # the job id (callbacks) or event id (forwards) the body names
    count: int = 0


class ReceiverProcess:
    """The loopback receiver (tests/e2e/chaos_receiver.py) as a process that can be taken down
    and started again on the same port; what it saw is read from its file."""

    def __init__(self, tmp: Path, secret: str, delay: float = 0.02) -> None:
        self.port, self.secret, self.delay = free_port(), secret, delay
        self.out, self.log = tmp / "received.jsonl", tmp / "receiver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL (the same across restarts)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start listening (again) and wait until it accepts connections."""
        args = [sys.executable, "-m", "tests.e2e.chaos_receiver", str(self.port), str(self.out)]
        env = {**os.environ, "CHAOS_SIGNING": self.secret}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*args, str(self.delay)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"receiver did not start: {self.log.read_text()[-1500:]}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Take it down: connections are refused until start()."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def records(self) -> list[dict[str, Any]]:
        """Every request it received, in order: path, id (webhook-id), subject, ok[, error]."""
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def ids_by_subject(self, path: str) -> dict[str, list[Seen]]:
        """subject -> what was seen for it on ``path``, one entry per distinct webhook-id."""
        by_id: dict[str, Seen] = {}
        for record in self.records():
            if record["path"] == path and record["ok"]:
                seen = by_id.setdefault(record["id"], Seen(path, record["subject"]))
                seen.count += 1
        grouped: dict[str, list[Seen]] = defaultdict(list)
        for seen in by_id.values():
            grouped[seen.subject].append(seen)
        return grouped

    @property
    def bad(self) -> list[str]:
        """Requests that failed verification: why."""
        return [f"{r['path']}: {r.get('error')}" for r in self.records() if not r["ok"]]


def main() -> None:
    """Serve until terminated."""
    port, out_path, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    app = make_app(out_path, delay, os.environ["CHAOS_SIGNING"])
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        backlog=1024,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
