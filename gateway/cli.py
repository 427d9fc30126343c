"""The `gateway` command: dev (everything), api, worker QUEUE..., beat, status.

One piece (~290 lines): the argument parser and one short function per subcommand; what each
starts lives elsewhere (gateway/dev.py, tasks/app.py, tasks/beat.py, tasks/monitor.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from tasks.queues import QUEUES, THREADS_SWITCH_INTERVAL, WORKER_PROFILES

# prometheus-client's multiprocess mode (gateway/metrics.py, tasks/metrics.py)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Beat ticks at least every 5 s (tasks/beat.py MAX_TICK_SECONDS); six missed ticks is stuck.
BEAT_STALE_SECONDS = 30.0
# below compose's 10 s stop grace and `gateway dev`'s 15 s, so streams end cleanly, not killed
GRACEFUL_SHUTDOWN_SECONDS = 5


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
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="serve this worker's Prometheus metrics here (default WORKER_METRICS_PORT; 0: off)",
    )
    beat = sub.add_parser("beat", help="the periodic scheduler")
    beat.add_argument(
        "--healthcheck",
        action="store_true",
        help=f"exit 0 if a beat ticked within {BEAT_STALE_SECONDS:.0f} s (its liveness file)",
    )
    sub.add_parser("status", help="queues, schedule, dead letters and workers, from Redis")
    args = parser.parse_args(argv)
    if args.command == "status":
        return print_status()
    if args.command == "api":
        return run_api(args.host, args.port, args.workers)
    if args.command == "worker":
        return run_worker(
            args.queues, args.pool, args.concurrency, args.loglevel, args.metrics_port
        )
    if args.command == "beat":
        return beat_healthcheck() if args.healthcheck else run_beat()
    from core.settings import get_settings
    from gateway.dev import run_dev

    return run_dev(args.host, args.port, get_settings())


def run_api(host: str, port: int, workers: int = 1) -> int:
    """Serve the API with uvicorn."""
    from core.settings import get_settings
    from gateway.dev import announce_dev_key, check_bind

    settings = get_settings()
    check_bind(settings, host)
    announce_dev_key(settings, "gateway api")
    shared = None
    if workers > 1 and MULTIPROC_ENV not in os.environ:
        # each process would count only its own requests and a scrape reach one of them:
        # prometheus-client's multiprocess mode shares the counts through files in a directory of
        # this run's own (read before the processes start, so set here)
        shared = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[MULTIPROC_ENV] = shared
    try:
        _serve(host, port, workers)
    finally:
        if shared:
            shutil.rmtree(shared, ignore_errors=True)
    return 0


def _serve(host: str, port: int, workers: int) -> None:
    import uvicorn

    from core.logs import dict_config
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
        # On SIGTERM uvicorn waits for open responses, and an event stream (GET
        # /v1/jobs/{id}/stream, the console's) lasts until its job is final: without a bound one
        # waiting client holds a restart until SIGKILL. After this, open streams are cancelled
        # (they unsubscribe; clients reconnect to another process) and the process exits.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        log_level="info",
        # every uvicorn process logs through core/logs.py: LOG_FORMAT, secrets masked
        log_config=dict_config("INFO"),
    )


def run_worker(
    queues: list[str],
    pool: str | None,
    concurrency: int | None,
    loglevel: str,
    metrics_port: int | None = None,
) -> int:
    """Run a Celery worker on ``queues`` with the first queue's profile unless overridden."""
    from core import logs
    from core.settings import get_settings

    settings = get_settings()
    # before Celery, whose start-up warnings (e.g. running as root) would go out unformatted
    logs.configure(loglevel.upper())
    if "email" in queues and settings.smtp_host is None:
        raise SystemExit(
            "SMTP_HOST is unset: the email worker needs an SMTP server. Set SMTP_HOST (and "
            "SMTP_PORT, SMTP_TLS), or run `gateway dev`, which starts a local mail catcher"
        )

    default_pool, default_concurrency = WORKER_PROFILES[queues[0]]
    pool = pool or default_pool
    metrics_port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if metrics_port and pool == "prefork":
        _multiprocess_metrics_dir()
    from tasks import metrics
    from tasks.app import app

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
    metrics.plan(metrics_port, queues, concurrency)
    # JSON logs: no banner (plain text on stdout); the "ready" log line says the worker is up
    quiet = ["--quiet"] if settings.log_format == "json" else []
    app.worker_main(
        [
            *quiet,
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


def _multiprocess_metrics_dir() -> None:
    """Prefork children count into files of this worker's own directory (tasks/metrics.py).

    Set before anything imports prometheus_client, which reads it once; removed at exit.
    """
    import atexit

    path = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[MULTIPROC_ENV] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def run_beat() -> int:
    """Run Celery beat (periodic jobs), keeping its state under the data directory."""
    from core import logs
    from core.settings import get_settings
    from tasks.app import app

    logs.configure("INFO")
    data_dir = get_settings().data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # the healthcheck's reference point: a beat that has not ticked yet is starting, not stuck
    get_settings().beat_alive_file.touch()
    from tasks.periodic import beat_schedule

    app.conf.beat_schedule = beat_schedule()
    # JSON logs: no banner (plain text on stdout)
    quiet = ["--quiet"] if get_settings().log_format == "json" else []
    app.start(
        [
            *quiet,
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


def beat_healthcheck() -> int:
    """0 if beat's liveness file (touched on every tick, leader or standby) is fresh, else 1."""
    from core.settings import get_settings

    path = get_settings().beat_alive_file
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {path} does not exist (beat never started here)")
        return 1
    if age > BEAT_STALE_SECONDS:
        print(f"unhealthy: beat last ticked {age:.0f} s ago")
        return 1
    print(f"healthy: beat ticked {age:.0f} s ago")
    return 0


def print_status() -> int:
    """Print the queues' state as a table; 1 with a message if Redis cannot be read."""
    import redis

    from core.settings import get_settings
    from tasks.keys import Keys
    from tasks.monitor import snapshot

    settings = get_settings()
    where = _redacted(settings.redis_address)
    timeout = settings.redis_timeout_seconds
    client = redis.Redis.from_url(
        settings.redis_address, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        state = snapshot(client, Keys(settings.redis_key_prefix), in_flight=True)
    except redis.RedisError as exc:
        print(f"error: cannot read Redis at {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"redis: {where} (key prefix {settings.redis_key_prefix!r})")
    print(f"{'queue':<10} {'depth':>8} {'oldest age':>11} {'workers':>8} {'in flight':>10}")
    for q in state.queues:
        age = "-" if q.oldest_age_seconds is None else _duration(q.oldest_age_seconds)
        print(f"{q.name:<10} {q.depth:>8} {age:>11} {q.workers_alive:>8} {q.in_flight or 0:>10}")
    if state.workers_alive.get("unknown"):
        print(f"(+{state.workers_alive['unknown']} worker(s) that do not say their queues)")
    lag = _duration(state.schedule_lag_seconds)
    print(f"scheduled: {state.scheduled} (earliest due entry {lag} late)")
    dead = state.dead_letters_total
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(state.dead_letters.items()) if n)
    print(f"dead letters: {dead}" + (f" ({kinds})" if kinds else ""))
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _redacted(url: str) -> str:
    """The URL without its password (it is printed)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


if __name__ == "__main__":
    sys.exit(main())
