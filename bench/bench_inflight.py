"""Benchmark: many calls in flight in ONE worker process of the llm, email or callbacks queue.

Run from the repo root:  python bench/bench_inflight.py [--queue llm] [--jobs 10000] [--delay 2]
                         [--concurrency N]
Starts Redis (embedded unless REDIS_URL is set), a slow server on loopback that holds every call
for --delay seconds (bench/slow_servers.py: an OpenAI-compatible HTTP server for llm, a callback
receiver for callbacks, an SMTP relay for email; each counts the calls it holds) and one
`gateway worker QUEUE` process with its queue profile. The work is written to Redis before the
worker starts, exactly as the gateway writes it: llm and email jobs as POST /v1/jobs/... does
(JobStore.create + task_message), callback deliveries as a finishing job does (add_delivery).

Prints: completed per second over the run (first start to last finish), the peak number of calls
held at the server, the worker's peak RSS (VmHWM of it and its children), its CPU per job, and
p50/p99 of each job's run time (start -> finish: the delay plus the worker's overhead). Exits 1
when a target is missed: >= 1000 in flight, >= 450 jobs/s, < 400 MB RSS, every job succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_INFLIGHT = 1000
TARGET_RATE = 450.0
TARGET_RSS_MB = 400.0
SERVERS = REPO / "bench" / "slow_servers.py"


def stats(port: int) -> dict[str, int]:
    """The slow server's counters."""
    import httpx

    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json())


@dataclass
class Workload:
    """What one queue's benchmark runs: its server, its worker settings, its records."""

    queue: str
    server: str  # "http" or "smtp"
    env: Callable[[int], dict[str, str]]  # worker settings, given the server's port
    ok_status: str
    record_key: Callable[[Any, str], str]  # (Keys, id) -> the hash that shows progress


def _llm_env(port: int) -> dict[str, str]:
    return {"LLM_BASE_URL": f"http://127.0.0.1:{port}", "LLM_TIMEOUT_SECONDS": "60"}


def _email_env(port: int) -> dict[str, str]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_TLS": "none"}


def _callbacks_env(port: int) -> dict[str, str]:
    return {"OUTBOUND_ALLOW_NETWORKS": "127.0.0.1/32", "OUTBOUND_ALLOW_HTTP": "true"}


WORKLOADS = {
    "llm": Workload("llm", "http", _llm_env, "succeeded", lambda k, i: k.job(i)),
    "email": Workload("email", "smtp", _email_env, "succeeded", lambda k, i: k.job(i)),
    "callbacks": Workload(
        "callbacks", "http", _callbacks_env, "delivered", lambda k, i: k.delivery(i)
    ),
}

PAYLOADS: dict[str, dict[str, Any]] = {
    "llm": {"model": "stub", "messages": [{"role": "user", "content": "hello there"}]},
    "email": {
        "to": ["someone@example.com"],
        "from": "bench@example.com",
        "subject": "bench",
        "text": "hello there",
    },
}


# ---- the run


def vm_hwm_kb(pid: int) -> int:
    """Peak RSS of ``pid`` and all its descendants, in KiB (each one's VmHWM, summed)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.extend(int(c) for c in children)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check`` until truthy or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


async def enqueue_jobs(redis_url: str, prefix: str, kind: str, n: int) -> list[str]:
    """Write ``n`` jobs of ``kind`` the way POST /v1/jobs/{kind} does; return their ids."""
    from redis.asyncio import Redis

    from core.kinds import KINDS
    from tasks.keys import Keys
    from tasks.pipelined import PipelinedRedis
    from tasks.protocol import task_message
    from tasks.queues import queue_for
    from tasks.store import JobStore, NewJob

    client = Redis.from_url(redis_url, max_connections=64)
    fast = PipelinedRedis(redis_url, 10.0)
    store = JobStore(client, Keys(prefix), 3600, fast)
    spec = KINDS[kind]
    queue = queue_for(spec.task)
    ids = [str(uuid.uuid4()) for _ in range(n)]

    async def one(job_id: str) -> None:
        job = NewJob(job_id, kind, "bench", PAYLOADS[kind], 1)
        await store.create(job, task_message(spec.task, job_id, queue, [job_id]), queue)

    for start in range(0, n, 50):
        await asyncio.gather(*(one(i) for i in ids[start : start + 50]))
    await fast.close()
    await client.aclose()
    return ids


def enqueue_deliveries(redis_url: str, prefix: str, port: int, n: int) -> list[str]:
    """Write ``n`` callback deliveries the way a finishing job does; return their ids."""
    import redis

    from tasks.deliveries import add_delivery
    from tasks.keys import Keys

    r, keys, ids = redis.Redis.from_url(redis_url), Keys(prefix), []
    body = {"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00Z", "data": {"n": 1}}
    for start in range(0, n, 200):
        with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 200)):
                ids.append(
                    add_delivery(
                        pipe,
                        keys,
                        url=f"http://127.0.0.1:{port}/hook",
                        body=body,
                        parent=f"bench:{i}",
                        owner="bench",
                        max_attempts=1,
                        ttl=3600,
                    )
                )
            pipe.execute()
    return ids


def ts(text: bytes | None) -> float | None:
    """An ISO timestamp from a job record as epoch seconds."""
    if not text:
        return None
    return datetime.fromisoformat(text.decode().replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def rows_of(r: Any, keys: Any, workload: Workload, ids: list[str]) -> list[tuple[str, Any, Any]]:
    """(status, start, finish) of every record, times as epoch seconds (None if not there)."""
    with r.pipeline(transaction=False) as pipe:
        for item in ids:
            if workload.queue == "callbacks":
                pipe.hmget(keys.delivery(item), "status", "finished_at")
                pipe.lindex(keys.delivery_attempts(item), -1)
            else:
                pipe.hmget(keys.job(item), "status", "started_at", "finished_at")
        replies = pipe.execute()
    if workload.queue != "callbacks":
        return [((s or b"").decode(), ts(a), ts(f)) for s, a, f in replies]
    rows = []
    for (status, finished), attempt in zip(replies[::2], replies[1::2], strict=True):
        end = ts(finished)
        # a delivery records how long its attempt took, not when it started
        took = json.loads(attempt)["latency_ms"] / 1000 if attempt else None
        start = end - took if end is not None and took is not None else None
        rows.append(((status or b"").decode(), start, end))
    return rows


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queue", choices=sorted(WORKLOADS), default="llm")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, help="worker pool size (default: the profile)")
    parser.add_argument("--pool", help="worker pool (default: the queue's profile)")
    args = parser.parse_args()
    workload = WORKLOADS[args.queue]

    import redis

    from gateway.embedded import EmbeddedRedis, free_port
    from tasks.keys import Keys

    embedded = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        embedded = EmbeddedRedis().start()
        redis_url = embedded.url
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    port, stats_port = free_port(), free_port()
    if workload.server == "http":
        stats_port = port
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix, ENVIRONMENT="dev", **workload.env(port)
    )
    server_cmd = [sys.executable, str(SERVERS), workload.server, str(port), str(args.delay)]
    if workload.server == "smtp":
        server_cmd.append(str(stats_port))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(server_cmd, cwd=REPO))
        wait_until(lambda: _up(stats_port), 20, "the slow server")
        r = redis.Redis.from_url(redis_url)
        r.delete(workload.queue)
        print(f"enqueueing {args.jobs} {args.queue} jobs ...", flush=True)
        if workload.queue == "callbacks":
            ids = enqueue_deliveries(redis_url, prefix, port, args.jobs)
        else:
            ids = asyncio.run(enqueue_jobs(redis_url, prefix, args.queue, args.jobs))
        worker_cmd = [sys.executable, "-m", "gateway.cli", "worker", workload.queue]
        worker_cmd += ["--loglevel", "warning"]
        if args.concurrency:
            worker_cmd += ["--concurrency", str(args.concurrency)]
        if args.pool:
            worker_cmd += ["--pool", args.pool]
        (REPO / "var").mkdir(exist_ok=True)
        log = open(REPO / "var" / "bench_inflight_worker.log", "wb")
        worker = subprocess.Popen(worker_cmd, cwd=REPO, env=env, stdout=log, stderr=log)
        procs.append(worker)
        keys = Keys(prefix)
        started = time.monotonic()
        peak_kb = 0
        waiting = list(ids)  # only the records not seen finished yet are polled again
        while waiting:
            if worker.poll() is not None:
                raise SystemExit("the worker exited; see var/bench_inflight_worker.log")
            if time.monotonic() - started > 60 + 3 * args.jobs / TARGET_RATE:
                raise SystemExit(f"only {len(ids) - len(waiting)}/{len(ids)} finished in time")
            time.sleep(1.0)
            peak_kb = max(peak_kb, vm_hwm_kb(worker.pid))
            with r.pipeline(transaction=False) as pipe:
                for item in waiting:
                    pipe.hget(workload.record_key(keys, item), "finished_at")
                finished = pipe.execute()
            waiting = [item for item, at in zip(waiting, finished, strict=True) if not at]
        peak_kb = max(peak_kb, vm_hwm_kb(worker.pid))
        worker_cpu = cpu_seconds(worker.pid)
        rows = rows_of(r, keys, workload, ids)
        server = stats(stats_port)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if embedded is not None:
            embedded.stop()

    statuses: dict[str, int] = {}
    for status, _, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    starts = [s for _, s, _ in rows if s is not None]
    ends = [e for _, _, e in rows if e is not None]
    run_times = [e - s for _, s, e in rows if s is not None and e is not None]
    seconds = max(ends) - min(starts)
    rate = len(ends) / seconds
    rss_mb = peak_kb / 1024
    result = {
        "queue": workload.queue,
        "jobs": len(ids),
        "statuses": statuses,
        "seconds": round(seconds, 2),
        "jobs_per_s": round(rate, 1),
        "peak_in_flight_at_server": server["peak"],
        "worker_peak_rss_mb": round(rss_mb, 1),
        "run_time_p50_s": round(percentile(run_times, 50), 3),
        "run_time_p99_s": round(percentile(run_times, 99), 3),
        "worker_cpu_ms_per_job": round(worker_cpu * 1000 / len(ids), 2),
        "server_delay_s": args.delay,
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    ok = (
        server["peak"] >= TARGET_INFLIGHT
        and rate >= TARGET_RATE
        and rss_mb < TARGET_RSS_MB
        and statuses.get(workload.ok_status, 0) == len(ids)
    )
    print(
        f"targets: in flight >= {TARGET_INFLIGHT}, >= {TARGET_RATE:.0f} jobs/s, "
        f"< {TARGET_RSS_MB:.0f} MB RSS, all {workload.ok_status}: {'MET' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


def _up(port: int) -> bool:
    try:
        stats(port)
        return True
    except OSError:
        return False
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
