"""Benchmark: what endpoint limits cost per delivery; what a hanging endpoint costs its neighbours.

Run from the repo root:  python bench/bench_limits.py [--calls 20000] [--events 200]

Part 1, Redis cost per delivery, one process, one pipelined connection, 100 calls in flight, on
fresh deliveries each phase (Redis embedded unless REDIS_URL is set; db 15, must be empty):
  claim (before)     tasks/deliveries.py claim (DELIVERY_CLAIM), what every delivery paid before
  gate, plain        the gate script on a delivery without endpoint_id (the common path now)
  gate, endpoint     the gate on an endpoint delivery with rate_limit and max_in_flight: reads
                     the endpoint, expires leases, GCRA, takes a lease, claims
  final, plain       the attempt's final transaction (MULTI ... EXEC) of a plain delivery
  final, endpoint    the same plus the outcome script (EVAL inside the MULTI)
Printed per phase: Redis's own time per call (INFO commandstats, usec_per_call of the script
command; for the finals, of every command in the transaction summed per delivery) and the wall
time per call seen by the client at that concurrency.

Part 2, isolation: one real `gateway worker callbacks` (its profile: loop pool, 1500 slots), a
loopback receiver with a healthy path and one that holds every request 15 s (the worker's
OUTBOUND_TIMEOUT_SECONDS, its default), two endpoints (max_in_flight 32, the default), --events
events offered to both at 50 a second. Printed: accept -> receipt p50/p99/max at the healthy one,
and the hanging one's peak concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def endpoint_record(endpoint_id: str, url: str, **extra: str) -> dict[str, str]:
    """An endpoint's hash as tasks/endpoints.py documents it."""
    record = {
        "id": endpoint_id,
        "url": url,
        "event_types": '["*"]',
        "sources": "[]",
        "status": "enabled",
        "secret": "whsec_YmVuY2gtc2VjcmV0LTAxMjM0NTY3ODk=",
        "max_in_flight": "32",
        "rate_limit": "",
        "ordered": "",
        "failure_streak": "0",
        "failing_since": "",
    }
    record.update(extra)
    return record


def make_deliveries(r: Any, keys: Any, n: int, endpoint_id: str = "") -> list[str]:
    """``n`` deliveries written as fan-out or a finishing job writes them."""
    from tasks.deliveries import add_delivery

    ids: list[str] = []
    body = {"type": "invoice.paid", "data": {"n": 1}}
    for start in range(0, n, 500):
        with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 500)):
                ids.append(
                    add_delivery(
                        pipe,
                        keys,
                        url="http://127.0.0.1:9/hook",
                        body=body,
                        parent=f"bench:{i}",
                        owner="",
                        max_attempts=8,
                        ttl=600,
                        endpoint_id=endpoint_id,
                    )
                )
            pipe.execute()
    return ids


def command_usec(r: Any) -> dict[str, tuple[int, float]]:
    """(calls, usec) per command since the last CONFIG RESETSTAT."""
    stats = r.info("commandstats")
    return {name[8:]: (v["calls"], v["usec"]) for name, v in stats.items()}


async def timed(n: int, one: Any, concurrency: int = 100) -> float:
    """Run ``one(i)`` for i in range(n), ``concurrency`` at a time; wall µs per call."""
    started = time.perf_counter()
    for start in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
    return (time.perf_counter() - started) * 1e6 / n


def part_one(redis_url: str, calls: int) -> list[dict[str, Any]]:
    """Redis time and wall time per call of each phase."""
    import redis

    from tasks import endpoint_limits
    from tasks.deliveries import claim
    from tasks.keys import Keys
    from tasks.pipelined import Commands, PipelinedRedis

    r = redis.Redis.from_url(redis_url)
    keys = Keys(f"bench-{uuid.uuid4().hex[:6]}:")
    endpoint_id = f"ep_{uuid.uuid4().hex}"
    fields = endpoint_record(
        endpoint_id, "http://127.0.0.1:9/hook", rate_limit="1000000", max_in_flight="1000000"
    )
    r.hset(keys.endpoint(endpoint_id), mapping=fields)
    rows: list[dict[str, Any]] = []

    async def run() -> None:
        conn = PipelinedRedis(redis_url, 10.0)
        gate_args = {"lease": 45.0, "wait": 1.0, "probe_interval": 30.0}

        async def phase(name: str, ids: list[str], one: Any, commands: tuple[str, ...]) -> None:
            await one(0)  # loads the script
            r.config_resetstat()
            wall = await timed(len(ids) - 1, lambda i: one(i + 1))
            stats = command_usec(r)
            usec = sum(stats.get(c, (0, 0.0))[1] for c in commands) / (len(ids) - 1)
            rows.append(
                {
                    "phase": name,
                    "redis_us_per_delivery": round(usec, 2),
                    "wall_us_per_call": round(wall, 2),
                    "calls": len(ids) - 1,
                }
            )

        plain = make_deliveries(r, keys, calls)
        await phase(
            "claim (before)",
            plain,
            lambda i: claim(conn, keys, plain[i]),
            ("evalsha",),
        )
        plain = make_deliveries(r, keys, calls)
        await phase(
            "gate, plain",
            plain,
            lambda i: endpoint_limits.gate(conn, keys, plain[i], **gate_args),
            ("evalsha",),
        )
        routed = make_deliveries(r, keys, calls, endpoint_id)
        await phase(
            "gate, endpoint (rate + in-flight)",
            routed,
            lambda i: endpoint_limits.gate(conn, keys, routed[i], **gate_args),
            ("evalsha",),
        )

        def final(delivery_id: str, with_outcome: bool) -> Commands:
            writes = Commands()
            writes.rpush(keys.delivery_attempts(delivery_id), '{"attempt": 1}')
            writes.hset(keys.delivery(delivery_id), mapping={"status": "delivered", "x": ""})
            writes.expire(keys.delivery(delivery_id), 600)
            writes.expire(keys.delivery_attempts(delivery_id), 600)
            if with_outcome:
                endpoint_limits.outcome(
                    writes,
                    keys,
                    endpoint_id,
                    delivery_id,
                    result="ok",
                    final=True,
                    now_iso="2026-01-01T00:00:00Z",
                    pause_after=5,
                    disable_after=432000.0,
                    reason="",
                    probe_interval=30.0,
                    disabled_event=None,
                )
            return writes

        txn = ("multi", "rpush", "hset", "expire", "exec", "eval")
        await phase("final, plain", plain, lambda i: conn.transaction(final(plain[i], False)), txn)
        await phase(
            "final, endpoint (+ outcome)",
            routed,
            lambda i: conn.transaction(final(routed[i], True)),
            txn,
        )
        await conn.close()

    asyncio.run(run())
    for key in r.scan_iter(f"{keys.prefix}*", count=1000):
        r.delete(key)
    r.delete("callbacks")
    return rows


class Receiver:
    """A loopback receiver: /hang holds 15 s, anything else answers 200 at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[int, float] = {}
        self.active = 0
        self.peak_hang = 0
        self.stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path == "/hang":
                    with receiver.lock:
                        receiver.active += 1
                        receiver.peak_hang = max(receiver.peak_hang, receiver.active)
                    receiver.stop.wait(15)
                    with receiver.lock:
                        receiver.active -= 1
                else:
                    with receiver.lock:
                        receiver.arrivals[body["data"]["n"]] = time.time()
                try:
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def part_two(redis_url: str, events: int) -> dict[str, Any]:
    """Accept -> receipt at the healthy endpoint while its neighbour hangs."""
    import redis

    from tasks.endpoints import offer, parse
    from tasks.keys import Keys

    r = redis.Redis.from_url(redis_url)
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    keys = Keys(prefix)
    receiver = Receiver()
    hanging, healthy = f"ep_{uuid.uuid4().hex}", f"ep_{uuid.uuid4().hex}"
    r.hset(keys.endpoint(hanging), mapping=endpoint_record(hanging, f"{receiver.url}/hang"))
    r.hset(keys.endpoint(healthy), mapping=endpoint_record(healthy, f"{receiver.url}/ok"))
    endpoints = [parse(r.hgetall(keys.endpoint(e))) for e in (hanging, healthy)]
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        ENVIRONMENT="dev",
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
    )
    (REPO / "var").mkdir(exist_ok=True)
    log = open(REPO / "var" / "bench_limits_worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "callbacks", "--loglevel", "warning"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
    )
    accepted: dict[int, float] = {}
    try:
        time.sleep(3)  # the worker's start-up, before the clock starts
        for n in range(events):
            accepted[n] = time.time()
            with r.pipeline(transaction=True) as pipe:
                offer(
                    pipe,
                    keys,
                    endpoints,
                    event_type="invoice.paid",
                    source="bench",
                    body={"type": "invoice.paid", "data": {"n": n}},
                    parent=f"event:{n}",
                    owner="",
                    max_attempts=8,
                    ttl=600,
                )
                pipe.execute()
            time.sleep(0.02)
        deadline = time.time() + 60
        while len(receiver.arrivals) < events and time.time() < deadline:
            time.sleep(0.1)
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        receiver.close()
    lat = sorted(receiver.arrivals[n] - accepted[n] for n in receiver.arrivals)
    for key in r.scan_iter(f"{prefix}*", count=1000):
        r.delete(key)
    r.delete("callbacks")
    return {
        "events": events,
        "received_by_healthy": len(lat),
        "p50_s": round(lat[len(lat) // 2], 3) if lat else None,
        "p99_s": round(lat[max(0, int(0.99 * len(lat)) - 1)], 3) if lat else None,
        "max_s": round(lat[-1], 3) if lat else None,
        "hanging_peak_in_flight": receiver.peak_hang,
    }


def main() -> int:
    """Run both parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()

    import redis

    from gateway.embedded import EmbeddedRedis

    embedded = None
    base = os.environ.get("REDIS_URL")
    if not base:
        embedded = EmbeddedRedis().start()
        base = embedded.url
    url = base.rsplit("/", 1)[0] + "/15" if base.count("/") > 2 else base + "/15"
    try:
        if redis.Redis.from_url(url).dbsize():
            raise SystemExit(f"{url} is not empty")
        for row in part_one(url, args.calls):
            print(json.dumps(row))
        isolation = part_two(url, args.events)
        print(json.dumps(isolation))
        ok = isolation["received_by_healthy"] == args.events and isolation["p99_s"] < 1.0
        print(f"isolation: all received, p99 < 1 s: {'MET' if ok else 'MISSED'}")
        return 0 if ok else 1
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
