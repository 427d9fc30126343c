"""The chaos suite's traffic: a fixed plan of echo jobs (with and without callbacks) and signed
inbound webhooks, sent by a few client threads at a steady pace through the real API. A client
that gets a 503, an error or a timeout sends the same request again with the same Idempotency-Key
or webhook-id, as a well-behaved client would, so a retry never makes work twice.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.conftest import AUTH

CLIENT_TIMEOUT = 2.0  # a request slower than this is a failure (issue 10: no hang over 2 s)
KINDS = ("echo", "echo_cb", "webhook")


@dataclass
class Submission:
    """One unit of work the suite asks for, and what the API answered in the end."""

    index: int
    kind: str  # echo | echo_cb (with a callback_url) | webhook
    key: str  # the Idempotency-Key, or the webhook-id
    body: bytes
    id: str | None = None  # the job or event id from the 202 (or the webhook's 200 duplicate)
    tries: int = 0
    accepted_at: float | None = None  # seconds after the first submission was due


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange: when it started (monotonic), how long it took, what came back."""

    at: float
    latency: float
    outcome: str  # "202", "503", "200-duplicate", "500", "timeout", "ConnectError", ...


def plan(count: int, receiver_url: str, run: str, seed: int = 10) -> list[Submission]:
    """``count`` submissions: 40 % echo, 30 % echo with a callback, 30 % webhooks, interleaved."""
    rnd = random.Random(seed)
    subs = []
    for i in range(count):
        kind = KINDS[0] if i % 10 < 4 else KINDS[1] if i % 10 < 7 else KINDS[2]
        body: dict[str, Any]
        if kind == "webhook":
            body = {"type": "order.created", "data": {"n": i, "run": run}}
            key = f"msg_chaos_{run}_{i:06d}"
        else:
            body = {"message": f"chaos {run} {i}", "sleep_ms": rnd.randint(5, 40)}
            if kind == "echo_cb":
                body["callback_url"] = f"{receiver_url}/cb"
            key = f"chaos-{run}-{i:06d}"
        subs.append(Submission(i, kind, key, json.dumps(body).encode()))
    return subs


@dataclass
class Clients:
    """Client threads that send ``subs`` evenly over ``window`` seconds from ``t0``."""

    base_url: str
    subs: list[Submission]
    secret: str
    t0: float
    window: float
    threads: int = 6
    give_up_after: float = 60.0  # past the window: a submission still not accepted is a failure
    answers: list[Answer] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start the client threads."""
        for _ in range(self.threads):
            thread = threading.Thread(target=self._work, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> bool:
        """Wait for every submission to be accepted or given up; whether all threads ended."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.running()

    def running(self) -> bool:
        """Whether some client thread is still sending."""
        return any(thread.is_alive() for thread in self._threads)

    def _take(self) -> Submission | None:
        with self._lock:
            if self._next >= len(self.subs):
                return None
            self._next += 1
            return self.subs[self._next - 1]

    def _work(self) -> None:
        verifier = Webhook(self.secret)
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=CLIENT_TIMEOUT) as http:
            while (sub := self._take()) is not None:
                due = self.t0 + sub.index * self.window / len(self.subs)
                time.sleep(max(0.0, due - time.monotonic()))
                self._submit(http, verifier, sub)

    def _submit(self, http: httpx.Client, verifier: Webhook, sub: Submission) -> None:
        give_up = self.t0 + self.window + self.give_up_after
        while sub.id is None and time.monotonic() < give_up:
            sub.tries += 1
            start = time.monotonic()
            pause = 0.5
            try:
                response = self._send(http, verifier, sub)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            else:
                outcome = str(response.status_code)
                if response.status_code == 202:
                    sub.id = response.json()["id"]
                elif response.status_code == 200 and response.json().get("duplicate"):
                    outcome, sub.id = "200-duplicate", response.json()["id"]
                elif response.status_code == 503:
                    pause = min(float(response.headers.get("retry-after", "1")), 1.0)
            self.answers.append(Answer(start, time.monotonic() - start, outcome))
            if sub.id is not None:
                sub.accepted_at = time.monotonic() - self.t0
            if sub.id is None:
                time.sleep(pause)

    def _send(self, http: httpx.Client, verifier: Webhook, sub: Submission) -> httpx.Response:
        if sub.kind != "webhook":
            headers = {"content-type": "application/json", "idempotency-key": sub.key}
            return http.post("/v1/jobs/echo", content=sub.body, headers=headers)
        now = datetime.now(tz=UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": sub.key,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": verifier.sign(sub.key, now, sub.body.decode()),
        }
        return http.post("/v1/webhooks/chaos", content=sub.body, headers=headers)
