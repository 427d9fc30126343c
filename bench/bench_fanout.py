"""Benchmark (issue 13 item 7): fan-out to endpoints, measured on the workers' own code.

Run from the repo root:  python bench/bench_fanout.py [--rounds 3] [--events 200] [--jobs 5000]

One process plays a worker: it calls the real final writes, ``tasks.runtime._finish`` (a job's
outcome: its status, callback and endpoint deliveries in one MULTI on the pipelined connection)
and ``tasks.webhooks._finish`` (an event's outcome, WATCH + MULTI through redis-py), against real
Redis (REDIS_URL's server, else an embedded one; db 15 by default, refused if not empty, flushed
between phases and at the end).

- **fan-out**: 100 endpoints that all want the event; each event or job outcome writes 100
  deliveries (record, attempt message on the callbacks queue, parent list, endpoint list) in one
  transaction. Printed: deliveries written per second and CPU per delivery, one thread.
- **no endpoints**: the job path with 0 endpoints, against "today" (the same ``_finish`` with the
  endpoint cache check taken out: no GET of the version key, no offer). The difference is what
  every job now pays for fan-out when nobody subscribed.
- **reload**: what a worker pays once after an endpoint change (load_all of 100 endpoints).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

ENDPOINTS = 100


@contextlib.contextmanager
def bench_redis(db: int) -> Iterator[str]:
    """A Redis URL on an empty db: REDIS_URL's server, or an embedded one."""
    embedded = None
    base = os.environ.get("REDIS_URL")
    if not base:
        from gateway.embedded import EmbeddedRedis

        embedded = EmbeddedRedis().start()
        base = embedded.url
        print(f"redis: embedded redis-server at {base}")
    parts = urlsplit(base)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))
    client = redis.Redis.from_url(url)
    try:
        if client.dbsize():
            raise SystemExit(f"{url} is not empty; pick another --redis-db")
        yield url
    finally:
        with contextlib.suppress(Exception):
            client.flushdb()
        client.close()
        if embedded is not None:
            embedded.stop()


def timed(n: int, step: Callable[[int], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``step(0..n-1)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        step(i)
    return time.perf_counter() - wall, time.process_time() - cpu


def add_endpoints(client: redis.Redis, count: int) -> None:
    """``count`` endpoint records that want every event, as the API writes them."""
    from tasks.endpoint_store import new_endpoint_id, new_secret, stored
    from tasks.runtime import keys

    k = keys()
    with client.pipeline(transaction=True) as pipe:
        for n in range(count):
            endpoint_id = new_endpoint_id()
            fields = {"id": endpoint_id, "url": f"http://127.0.0.1:9/{n}", "event_types": ["*"]}
            record = stored(fields) | {"status": "enabled", "secret": new_secret()}
            pipe.hset(k.endpoint(endpoint_id), mapping=record)  # type: ignore[arg-type]
            pipe.zadd(k.endpoints, {endpoint_id: n})
        pipe.incr(k.endpoints_version)
        pipe.execute()


def job(n: int) -> dict[str, object]:
    return {"id": f"bench-{n}", "kind": "echo", "attempts": 1, "owner": "bench"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=200, help="fanned-out events per phase")
    parser.add_argument("--jobs", type=int, default=5000, help="job outcomes per no-endpoint phase")
    parser.add_argument("--redis-db", type=int, default=15)
    args = parser.parse_args()

    with bench_redis(args.redis_db) as url:
        os.environ.update(REDIS_URL=url, REDIS_KEY_PREFIX="bench-fanout:", ENVIRONMENT="dev")
        from core.statuses import EventStatus, JobStatus
        from tasks import loop, runtime, webhooks
        from tasks.endpoints import load_all
        from tasks.pipelined import Commands
        from tasks.queues import THREADS_SWITCH_INTERVAL
        from tasks.routing import Plan

        # as a threads-pool worker runs (gateway/cli.py): its task threads hop to the loop thread
        sys.setswitchinterval(THREADS_SWITCH_INTERVAL)
        client = redis.Redis.from_url(url)
        k = runtime.keys()
        offering_write = runtime._write_offering

        def today_write(writes: Commands, _: object) -> None:
            loop.run(runtime.fast_redis().transaction(writes))  # the write before endpoints

        def job_finish(i: int) -> None:
            runtime._finish(job(i), JobStatus.SUCCEEDED, result={"ok": True})

        def event_finish(i: int, offered: bool = True) -> None:
            event = {"id": f"ev-{i}", "type": "invoice.paid", "source": "shop"}
            client.hset(k.event(event["id"]), "status", "processing")
            body = {"type": "invoice.paid", "event_id": event["id"], "data": {"n": i}}
            plan = Plan(EventStatus.ROUTED, body=body)
            offering = webhooks.Offering(event, "shop", plan) if offered else None
            webhooks._finish(event, EventStatus.ROUTED, offering=offering)

        def event_today(i: int) -> None:
            event_finish(i, offered=False)

        rows: dict[str, list[float]] = {}

        def row(name: str, value: float) -> None:
            rows.setdefault(name, []).append(value)

        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds}")
            # no endpoints: today's final writes (no version check, no offer) against the new ones
            client.flushdb()
            variants = (
                ("job", "today", job_finish, today_write),
                ("job", "0 endpoints", job_finish, offering_write),
                ("event", "today", event_today, offering_write),
                ("event", "0 endpoints", event_finish, offering_write),
            )
            for what, name, step, write in variants:
                runtime._write_offering = write  # type: ignore[assignment]
                step(-1)  # warm: connections, the cache's first load
                wall, cpu = timed(args.jobs, step)
                per, per_cpu = wall / args.jobs * 1e6, cpu / args.jobs * 1e6
                row(f"{what} outcome, {name}: us wall", per)
                row(f"{what} outcome, {name}: us CPU", per_cpu)
                print(f"  {what:5} outcome, {name:12} {per:7.1f} us wall  {per_cpu:7.1f} us CPU")
                client.flushdb()
            runtime._write_offering = offering_write
            # 100 endpoints: every outcome and event fans out to all of them
            add_endpoints(client, ENDPOINTS)
            wall = time.perf_counter()
            reloaded = load_all(client, k)
            reload_ms = (time.perf_counter() - wall) * 1e3
            assert len(reloaded) == ENDPOINTS
            row(f"reload {ENDPOINTS} endpoints: ms", reload_ms)
            print(f"  reload of {ENDPOINTS} endpoints (after a change)  {reload_ms:6.2f} ms")
            for name, step in (("job outcome", job_finish), ("event", event_finish)):
                step(-1)
                before = client.llen("callbacks")
                wall_s, cpu = timed(args.events, step)
                written = client.llen("callbacks") - before
                assert written == args.events * ENDPOINTS, written
                rate = written / wall_s
                row(f"{name} x {ENDPOINTS}: deliveries/s", rate)
                row(f"{name} x {ENDPOINTS}: us CPU/delivery", cpu / written * 1e6)
                print(f"  {name:11} x {ENDPOINTS} endpoints  {rate:8.0f} deliveries/s  "
                      f"{cpu / written * 1e6:6.1f} us CPU/delivery  "
                      f"{wall_s / args.events * 1e3:6.2f} ms/event")  # fmt: skip
            client.flushdb()
        print("medians:")
        for name, values in rows.items():
            print(f"  {name:45} {statistics.median(values):10.1f}")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
