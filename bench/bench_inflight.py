"""Benchmark: many LLM calls in flight in ONE `gateway worker llm` process.

Run from the repo root:  python bench/bench_inflight.py [--jobs 12000] [--delay 2] [--concurrency N]
Starts Redis (embedded unless REDIS_URL is set), an OpenAI-compatible stub on loopback that answers
after --delay seconds (tests/handlers/llm_stub.py's app, counting calls in flight), and one worker
process for the `llm` queue. It writes N job records and their Celery messages exactly as the API
does (JobStore.create + task_message), then watches them finish.

Prints: completed jobs/s over the run (first start to last finish), the peak number of calls in
flight at the stub, the worker's peak RSS (VmHWM of it and its children), and p50/p99 of each
job's run time (started -> finished: the stub's delay plus the worker's overhead). Exits 1 when a
target is missed: >= 1000 in flight, >= 450 jobs/s, < 400 MB RSS.
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
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_INFLIGHT = 1000
TARGET_RATE = 450.0
TARGET_RSS_MB = 400.0


# ---- the stub, run in its own process: `python bench/bench_inflight.py --serve-stub PORT DELAY`


def serve_stub(port: int, delay: float) -> None:
    """The LLM stub plus GET /stats: calls in flight now and at peak."""
    import uvicorn

    from tests.handlers.llm_stub import StubApp

    stub = StubApp(delay)
    state = {"inflight": 0, "peak": 0}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/stats":
            body = json.dumps({**state, "requests": stub.requests}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        state["inflight"] += 1
        state["peak"] = max(state["peak"], state["inflight"])
        try:
            await stub(scope, receive, send)
        finally:
            state["inflight"] -= 1

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=8192,
        http="httptools",
        loop="uvloop",
    )


def stub_stats(port: int) -> dict[str, int]:
    """The stub's counters."""
    import httpx

    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json())


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


async def enqueue(redis_url: str, prefix: str, n: int) -> list[str]:
    """Write ``n`` llm jobs the way POST /v1/jobs/llm does; return their ids."""
    from redis.asyncio import Redis

    from tasks.keys import Keys
    from tasks.kinds import KINDS
    from tasks.pipelined import PipelinedRedis
    from tasks.protocol import task_message
    from tasks.queues import queue_for
    from tasks.store import JobStore, NewJob

    client = Redis.from_url(redis_url, max_connections=64)
    fast = PipelinedRedis(redis_url, 10.0)
    store = JobStore(client, Keys(prefix), 3600, fast)
    spec = KINDS["llm"]
    queue = queue_for(spec.task)
    assert spec.retry is not None
    payload = {"model": "stub", "messages": [{"role": "user", "content": "hello there"}]}
    ids = [str(uuid.uuid4()) for _ in range(n)]

    async def one(job_id: str) -> None:
        job = NewJob(job_id, "llm", "bench", payload, spec.retry.max_attempts)  # type: ignore[union-attr]
        await store.create(job, task_message(spec.task, job_id, queue, [job_id]), queue)

    for start in range(0, n, 50):
        await asyncio.gather(*(one(i) for i in ids[start : start + 50]))
    await fast.close()
    await client.aclose()
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


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=12000)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, help="worker pool size (default: the profile)")
    parser.add_argument("--pool", help="worker pool (default: the llm queue's profile)")
    parser.add_argument("--serve-stub", nargs=2, metavar=("PORT", "DELAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(int(args.serve_stub[0]), float(args.serve_stub[1]))
        return 0

    import redis

    from gateway.embedded import EmbeddedRedis, free_port
    from tasks.keys import Keys

    embedded = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        embedded = EmbeddedRedis().start()
        redis_url = embedded.url
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    stub_port = free_port()
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        LLM_BASE_URL=f"http://127.0.0.1:{stub_port}",
        LLM_TIMEOUT_SECONDS="60",
        ENVIRONMENT="dev",
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--serve-stub", str(stub_port), str(args.delay)],
                cwd=REPO,
            )
        )
        wait_until(lambda: _stub_up(stub_port), 20, "the stub")
        r = redis.Redis.from_url(redis_url)
        r.delete("llm")
        print(f"enqueueing {args.jobs} llm jobs ...", flush=True)
        ids = asyncio.run(enqueue(redis_url, prefix, args.jobs))
        worker_cmd = [sys.executable, "-m", "gateway.cli", "worker", "llm", "--loglevel", "warning"]
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
        done = 0
        waiting = list(ids)  # only the jobs not seen finished yet are polled again
        while waiting:
            if worker.poll() is not None:
                raise SystemExit("the worker exited; see var/bench_inflight_worker.log")
            if time.monotonic() - started > 60 + 3 * args.jobs / TARGET_RATE:
                raise SystemExit(f"only {done}/{len(ids)} jobs finished in time")
            time.sleep(1.0)
            peak_kb = max(peak_kb, vm_hwm_kb(worker.pid))
            with r.pipeline(transaction=False) as pipe:
                for job_id in waiting:
                    pipe.hget(keys.job(job_id), "finished_at")
                finished = pipe.execute()
            waiting = [job_id for job_id, at in zip(waiting, finished, strict=True) if not at]
            done = len(ids) - len(waiting)
        peak_kb = max(peak_kb, vm_hwm_kb(worker.pid))
        worker_cpu = cpu_seconds(worker.pid)
        with r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "status", "started_at", "finished_at")
            rows = pipe.execute()
        stats = stub_stats(stub_port)
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
        statuses[status.decode()] = statuses.get(status.decode(), 0) + 1
    starts = [t for _, s, _ in rows if (t := ts(s)) is not None]
    ends = [t for _, _, f in rows if (t := ts(f)) is not None]
    run_times = [e - s for _, s0, f0 in rows if (s := ts(s0)) and (e := ts(f0))]
    seconds = max(ends) - min(starts)
    rate = len(ends) / seconds
    rss_mb = peak_kb / 1024
    result = {
        "jobs": len(ids),
        "statuses": statuses,
        "seconds": round(seconds, 2),
        "jobs_per_s": round(rate, 1),
        "peak_in_flight_at_stub": stats["peak"],
        "worker_peak_rss_mb": round(rss_mb, 1),
        "run_time_p50_s": round(percentile(run_times, 50), 3),
        "run_time_p99_s": round(percentile(run_times, 99), 3),
        "worker_cpu_ms_per_job": round(worker_cpu * 1000 / len(ids), 2),
        "stub_delay_s": args.delay,
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    ok = (
        stats["peak"] >= TARGET_INFLIGHT
        and rate >= TARGET_RATE
        and rss_mb < TARGET_RSS_MB
        and statuses.get("succeeded", 0) == len(ids)
    )
    print(
        f"targets: in flight >= {TARGET_INFLIGHT}, >= {TARGET_RATE:.0f} jobs/s, "
        f"< {TARGET_RSS_MB:.0f} MB RSS, all succeeded: {'MET' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


def _stub_up(port: int) -> bool:
    try:
        stub_stats(port)
        return True
    except OSError:
        return False
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
