"""Endpoint deliveries through a real callbacks worker to a real loopback receiver: signed with the
endpoint's secrets, paced by its rate and in-flight limits, isolated from a hanging neighbour,
paused and probed while failing, disabled by a 410 (with its event), held and released, ordered."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from standardwebhooks.webhooks import Webhook

from tasks import endpoint_limits
from tasks.deliveries import add_delivery
from tasks.endpoints import offer, parse
from tasks.keys import Keys
from tests.conftest import Processes, process_env, wait_for

SECRET = "whsec_" + "ZW5kcG9pbnQtc2VjcmV0LTAxMjM0NTY3ODk="
OLD_SECRET = "whsec_" + "b2xkLWVuZHBvaW50LXNlY3JldC0wMTIzNDU="
HANG_SECONDS = 15.0


@dataclass
class Hit:
    """One request as the receiver saw it."""

    path: str
    at: float
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """Paths: /ok (and any other) 200; /slow holds 0.5 s; /hang holds HANG_SECONDS;
    /first-fails answers 500 to the first attempt of each webhook-id; /gone 410; /down 500
    while ``down`` is set."""

    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    down: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.serve(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path.split("?")[0]
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            self.active[path] = self.active.get(path, 0) + 1
            self.peak[path] = max(self.peak.get(path, 0), self.active[path])
            first = headers.get("webhook-id", "") not in self.seen_ids
            self.seen_ids.add(headers.get("webhook-id", ""))
        status = 200
        if path == "/slow":
            self.stopping.wait(0.5)
        elif path == "/hang":
            self.stopping.wait(HANG_SECONDS)
        elif path == "/first-fails" and first:
            status = 500
        elif path == "/gone":
            status = 410
        elif path == "/down" and self.down.is_set():
            status = 500
        with self.lock:
            self.active[path] -= 1
            self.hits.append(Hit(path, time.time(), status, headers, json.loads(body)))
        try:
            handler.send_response(status)
            handler.send_header("content-length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:  # the worker gave up waiting (its timeout)
            pass

    def on(self, path: str, status: int | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path and status in (None, h.status)]

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Stack:
    """The worker's Redis and keys, and the receiver."""

    client: redis.Redis
    keys: Keys
    url: str
    receiver: Receiver
    procs: Processes

    def endpoint(self, path: str, **fields: Any) -> str:
        """Register an endpoint by writing its documented hash (the API's job, elsewhere)."""
        endpoint_id = f"ep_{uuid.uuid4().hex}"
        record = {
            "id": endpoint_id,
            "url": f"{self.receiver.url}{path}",
            "event_types": '["*"]',
            "sources": "[]",
            "status": "enabled",
            "secret": SECRET,
            "max_in_flight": "32",
            "rate_limit": "",
            "ordered": "",
            "headers": "",
            "failure_streak": "0",
            "failing_since": "",
        }
        record.update({k: str(v) for k, v in fields.items()})
        self.client.hset(self.keys.endpoint(endpoint_id), mapping=record)
        self.client.zadd(self.keys.endpoints, {endpoint_id: time.time()})
        return endpoint_id

    def send(self, endpoint_ids: list[str], n: int, *, tag: str = "") -> list[str]:
        """Offer event number ``n`` to the endpoints, in one transaction; the delivery ids."""
        endpoints = [parse(self.client.hgetall(self.keys.endpoint(e))) for e in endpoint_ids]
        with self.client.pipeline(transaction=True) as pipe:
            ids = offer(
                pipe,
                self.keys,
                endpoints,
                event_type="invoice.paid",
                source="test",
                body={"type": "invoice.paid", "data": {"n": n, "tag": tag, "at": time.time()}},
                parent=f"event:{tag}{n}",
                owner="",
                max_attempts=8,
                ttl=600,
            )
            pipe.execute()
        return ids

    def status_of(self, endpoint_id: str) -> str:
        return str((self.client.hget(self.keys.endpoint(endpoint_id), "status") or b"").decode())

    def wait(self, check: Any, timeout: float) -> Any:
        try:
            return wait_for(check, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.procs.logs()}") from None


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One callbacks worker (its queue profile: the loop pool, 1500 slots), loopback allowed."""
    url = f"{redis_server}/11"
    client = redis.Redis.from_url(url)
    client.flushdb()
    prefix = f"epl-{uuid.uuid4().hex[:6]}:"
    receiver = Receiver().start()
    procs = Processes(tmp_path_factory.mktemp("endpoint-limits"))
    retries = {"callbacks": {"max_attempts": 8, "schedule": [0.2] * 7, "jitter": 0}}
    env = process_env(
        url,
        prefix,
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        OUTBOUND_TIMEOUT_SECONDS=str(HANG_SECONDS),
        RETRY_POLICIES=json.dumps(retries),
        ENDPOINT_PAUSE_AFTER_FAILURES="3",
        ENDPOINT_PROBE_INTERVAL_SECONDS="1",
        ENDPOINT_WAIT_SECONDS="0.2",
    )
    procs.start(["worker", "callbacks"], env)
    try:
        yield Stack(client, Keys(prefix), url, receiver, procs)
    finally:
        receiver.stop()
        procs.stop()
        client.flushdb()
        client.close()


def test_signed_with_the_endpoint_s_secrets_and_its_headers_sent(stack: Stack) -> None:
    endpoint_id = stack.endpoint(
        "/ok",
        previous_secret=OLD_SECRET,
        previous_until=time.time() + 3600,
        headers=json.dumps({"X-Team": "billing"}),
    )
    stack.send([endpoint_id], 1, tag="signed")

    [hit] = stack.wait(
        lambda: [h for h in stack.receiver.on("/ok") if h.body["data"]["tag"] == "signed"], 30
    )

    raw = json.dumps(hit.body, separators=(",", ":")).encode()
    for secret in (SECRET, OLD_SECRET):  # both sign during the rotation's grace
        assert Webhook(secret).verify(raw, hit.headers)["data"]["n"] == 1
    assert hit.headers["x-team"] == "billing"


def windows(times: list[float], width: float = 1.0) -> int:
    """The most hits in any window of ``width`` seconds."""
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t < start + width) for i, start in enumerate(ordered))


def test_a_rate_limit_holds_at_the_receiver(stack: Stack) -> None:
    endpoint_id = stack.endpoint("/ok", rate_limit=5)
    started = time.time()
    for n in range(40):
        stack.send([endpoint_id], n, tag="rate")

    def arrived() -> list[Hit]:
        got = [h for h in stack.receiver.on("/ok") if h.body["data"]["tag"] == "rate"]
        return got if len(got) == 40 else []

    hits = stack.wait(arrived, 40)

    times = [h.at for h in hits]
    assert max(times) - started >= 7.0  # 5 at once, then 35 at 5 a second
    assert windows(times) <= 10  # never more than rate + burst in any one second
    assert sorted(h.body["data"]["n"] for h in hits) == list(range(40))


def test_max_in_flight_caps_concurrent_requests(stack: Stack) -> None:
    endpoint_id = stack.endpoint("/slow", max_in_flight=2)
    for n in range(10):
        stack.send([endpoint_id], n, tag="inflight")

    stack.wait(lambda: len(stack.receiver.on("/slow")) == 10, 30)

    assert stack.receiver.peak["/slow"] == 2


def test_a_hanging_endpoint_leaves_the_healthy_one_fast(stack: Stack) -> None:
    hanging = stack.endpoint("/hang")  # max_in_flight: the default 32
    healthy = stack.endpoint("/ok")
    accepted: dict[int, float] = {}
    for n in range(200):
        accepted[n] = time.time()
        stack.send([hanging, healthy], n, tag="isolation")
        time.sleep(0.02)  # offered as traffic arrives: ~50 events a second

    def arrived() -> list[Hit]:
        got = [h for h in stack.receiver.on("/ok") if h.body["data"]["tag"] == "isolation"]
        return got if len(got) == 200 else []

    hits = stack.wait(arrived, 60)

    latencies = sorted(h.at - accepted[h.body["data"]["n"]] for h in hits)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    assert p99 < 1.0, f"p99 {p99:.3f}s; max {latencies[-1]:.3f}s"
    assert stack.receiver.peak.get("/hang", 0) <= 32


def test_failures_pause_then_probes_then_a_success_resumes(stack: Stack) -> None:
    stack.receiver.down.set()
    endpoint_id = stack.endpoint("/down")
    for n in range(8):
        stack.send([endpoint_id], n, tag="pause")

    stack.wait(lambda: stack.status_of(endpoint_id) == "paused", 30)
    time.sleep(0.5)  # the attempts that were in flight when it paused come back
    before = len(stack.receiver.on("/down"))
    time.sleep(3.0)  # paused: one probe a second at most, the rest wait
    probes = len(stack.receiver.on("/down")) - before
    assert probes <= 4, probes

    stack.receiver.down.clear()
    stack.wait(
        lambda: {h.body["data"]["n"] for h in stack.receiver.on("/down", 200)} == set(range(8)),
        30,
    )
    assert stack.status_of(endpoint_id) == "enabled"


def test_410_disables_at_once_emits_its_event_holds_then_releases(stack: Stack) -> None:
    watcher = stack.endpoint("/watch", event_types='["endpoint.disabled"]')
    gone = stack.endpoint("/gone", event_types='["invoice.*"]')
    stack.send([gone, watcher], 1, tag="gone")

    stack.wait(lambda: stack.status_of(gone) == "disabled", 30)
    reason = stack.client.hget(stack.keys.endpoint(gone), "disabled_reason")
    assert reason == b"410 Gone from 127.0.0.1"
    [event] = stack.wait(
        lambda: [h for h in stack.receiver.on("/watch") if h.body["type"] == "endpoint.disabled"],
        30,
    )
    assert event.body["data"]["id"] == gone
    assert stack.client.hget(stack.keys.counters, "endpoint.disabled") == b"1"
    assert len(stack.receiver.on("/gone")) == 1  # one 410, nothing more sent to it

    # deliveries made for it before it was disabled (or retrying) are held, not sent
    with stack.client.pipeline(transaction=True) as pipe:
        held = [
            add_delivery(
                pipe,
                stack.keys,
                url=f"{stack.receiver.url}/gone",
                body={"type": "invoice.paid", "data": {"n": n, "tag": "held"}},
                parent=f"event:held{n}",
                owner="",
                max_attempts=8,
                ttl=600,
                endpoint_id=gone,
            )
            for n in range(3)
        ]
        pipe.execute()
    key = stack.keys.endpoint_limit(gone, "held")
    stack.wait(lambda: stack.client.zcard(key) == 3, 30)
    assert all(stack.client.hget(stack.keys.delivery(i), "status") == b"pending" for i in held)

    # the operator points it somewhere that works and enables it: what was held is sent
    stack.client.hset(
        stack.keys.endpoint(gone), mapping={"status": "enabled", "url": f"{stack.receiver.url}/ok"}
    )

    async def release() -> int:
        api = AsyncRedis.from_url(stack.url)
        try:
            return await endpoint_limits.release_held(api, stack.keys, gone)
        finally:
            await api.aclose()

    assert asyncio.run(release()) == 3
    stack.wait(
        lambda: (
            len([h for h in stack.receiver.on("/ok") if h.body["data"].get("tag") == "held"]) == 3
        ),
        30,
    )


def test_an_ordered_endpoint_receives_in_send_order_despite_failures(stack: Stack) -> None:
    endpoint_id = stack.endpoint("/first-fails", ordered=1)
    for n in range(20):
        stack.send([endpoint_id], n, tag="ordered")

    def delivered() -> list[Hit]:
        got = stack.receiver.on("/first-fails", 200)
        return got if len(got) == 20 else []

    hits = stack.wait(delivered, 90)

    assert [h.body["data"]["n"] for h in hits] == list(range(20))
    assert len(stack.receiver.on("/first-fails", 500)) == 20  # each failed once, held the line
    assert stack.receiver.peak["/first-fails"] == 1  # one at a time
