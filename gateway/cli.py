"""The `gateway` command: dev (everything), api, worker QUEUE..., beat."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.queues import QUEUES, THREADS_SWITCH_INTERVAL, WORKER_PROFILES


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen part."""
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("dev", "API, a worker per queue and beat"), ("api", "the HTTP API")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    sub.choices["api"].add_argument("--workers", type=int, default=1, help="uvicorn processes")
    worker = sub.add_parser("worker", help="a Celery worker for one or more queues")
    worker.add_argument("queues", nargs="+", choices=QUEUES)
    worker.add_argument("--pool", choices=("loop", "threads", "prefork", "solo"))
    worker.add_argument("--concurrency", type=int)
    worker.add_argument("--loglevel", default="info")
    sub.add_parser("beat", help="the periodic scheduler")
    args = parser.parse_args(argv)
    if args.command == "api":
        return run_api(args.host, args.port, args.workers)
    if args.command == "worker":
        return run_worker(args.queues, args.pool, args.concurrency, args.loglevel)
    if args.command == "beat":
        return run_beat()
    return run_dev(args.host, args.port)


def run_api(host: str, port: int, workers: int = 1) -> int:
    """Serve the API with uvicorn."""
    import uvicorn

    from gateway.http_limits import LimitedHttpToolsProtocol

    uvicorn.run(
        "gateway.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="auto",
        http=LimitedHttpToolsProtocol,  # uvicorn's httptools protocol, with a header limit
        access_log=False,
        proxy_headers=False,
        log_level="info",
    )
    return 0


def run_worker(queues: list[str], pool: str | None, concurrency: int | None, loglevel: str) -> int:
    """Run a Celery worker on ``queues`` with the first queue's profile unless overridden."""
    from tasks.app import app

    default_pool, default_concurrency = WORKER_PROFILES[queues[0]]
    pool = pool or default_pool
    if pool in ("threads", "loop"):
        # threads: hundreds of pool threads each hop on and off the GIL for every Redis round trip;
        # at the default 5 ms switch interval those hops, not the CPU, held an llm worker to ~100
        # jobs/s (bench/README.md). loop: two busy threads (consumer, loop) hand the GIL back and
        # forth; 0.2, 0.5 and 2 ms measured alike there, so it shares the threads' setting.
        sys.setswitchinterval(THREADS_SWITCH_INTERVAL)
    if pool == "loop":
        # Celery resolves a configured worker_pool by its import path (tasks/pool.py)
        app.conf.worker_pool = "tasks.pool:LoopPool"
        pool = "prefork"  # the CLI's default: it then takes app.conf.worker_pool
    concurrency = concurrency or default_concurrency or (os.cpu_count() or 1)
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{'-'.join(queues)}@%h",
            "--loglevel",
            loglevel,
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )
    return 0


def run_beat() -> int:
    """Run Celery beat (periodic jobs), keeping its state under the data directory."""
    from gateway.settings import get_settings
    from tasks.app import app

    data_dir = get_settings().data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    from tasks.periodic import beat_schedule

    app.conf.beat_schedule = beat_schedule()
    app.start(
        [
            "beat",
            "--loglevel",
            "info",
            "--scheduler",
            "tasks.beat:LeaderScheduler",
            "--schedule",
            str(data_dir / "celerybeat-schedule"),
        ]
    )
    return 0


def run_dev(host: str, port: int) -> int:
    """Start everything on this machine; Ctrl-C stops it all."""
    from gateway.embedded import EmbeddedRedis
    from gateway.settings import get_settings

    env = dict(os.environ)
    embedded = None
    if not env.get("REDIS_URL"):
        embedded = EmbeddedRedis(Path(get_settings().data_dir) / "redis").start()
        env["REDIS_URL"] = embedded.url
        print(f"gateway dev: embedded Redis at {embedded.url}", flush=True)
    me = [sys.executable, "-m", "gateway.cli"]
    commands = [[*me, "api", "--host", host, "--port", str(port)]]
    commands += [[*me, "worker", queue] for queue in QUEUES]
    commands.append([*me, "beat"])
    children = [subprocess.Popen(cmd, env=env, start_new_session=True) for cmd in commands]
    print(
        f"gateway dev: API on http://{host}:{port} with {len(QUEUES)} workers and beat", flush=True
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        dead = [c for c in children if c.poll() is not None]
        if dead:
            print(f"gateway dev: a child exited ({dead[0].args!r}); stopping", flush=True)
            code = 1
            break
        time.sleep(0.2)
    shutdown(children)
    if embedded is not None:
        embedded.stop()
    return code


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
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
