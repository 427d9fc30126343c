"""A worker's own Prometheus metrics: jobs, deliveries, in flight, pool slots, on `--metrics-port`.

Counted (and logged, when it is a failure) where an outcome is decided (tasks/runtime.py,
tasks/callbacks.py), after the write that makes it true: a write that fails hands the message back
and the work runs again, so counting before it would count twice.

One port per worker: the threads and loop pools run every task in the worker process, which serves
its registry from a thread once the worker is ready (`serve`). The prefork pool (`files`) runs tasks
in child processes; they use prometheus_client's multiprocess mode: `gateway worker` points
PROMETHEUS_MULTIPROC_DIR at a temporary directory of its own before anything imports
prometheus_client, each child writes its values to memory-mapped files there, and the parent
serves their sum (for gauges, of the live children). Chosen over children reporting to the parent:
no channel of our own to keep, and a child killed mid-task keeps what it had counted.

Ports: WORKER_METRICS_PORT (default 9100; 0: off), or `gateway worker --metrics-port`. `gateway dev`
runs one worker per queue on one machine and gives worker i the port plus i (9100-9105). A port
already taken is logged and that worker runs without metrics rather than not at all.

One module: the series, the hooks that move them and the server that shows them are one idea,
what a worker exports (about 280 lines).

Labels are bounded: kinds, queues, outcomes and status classes are fixed sets, and the destination
host of a delivery is one of the first `TOP_HOSTS` hosts this process delivered to, every later
one `other`, so callers naming ever new hosts cannot grow the series without end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextvars import ContextVar
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess

from core.kinds import KINDS
from core.logs import redact_url

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOP_HOSTS = 20
OTHER_HOST = "other"
JOB_OUTCOMES = ("succeeded", "retried", "failed", "dead")
DELIVERY_OUTCOMES = ("delivered", "retried", "failed", "dead")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "none")  # none: no answer (refused, timed out)
# handler runs: milliseconds (echo) to the files queue's hour
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# waits and whole lives include retry backoff: up to a day
WAIT_BUCKETS = (*RUN_BUCKETS[:-1], 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)

# no `*_created` series beside every counter and histogram: twice the lines for a fact no
# dashboard reads
disable_created_metrics()  # type: ignore[no-untyped-call]
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
# a registry of our own: a process importing tasks/ without being a worker (the API, beat, a
# test) must not show workers' series
# (in multiprocess mode the values live in files whatever the registry)
registry = CollectorRegistry(auto_describe=True)
if not MULTIPROCESS:
    ProcessCollector(registry=registry)

JOBS = Counter(
    "gateway_jobs", "Jobs by outcome on this worker", ["kind", "outcome"], registry=registry
)
JOB_DURATION = Histogram(
    "gateway_job_duration_seconds",
    "Claim to outcome of one attempt (the handler's run)",
    ["kind"],
    buckets=RUN_BUCKETS,
    registry=registry,
)
QUEUE_WAIT = Histogram(
    "gateway_job_queue_wait_seconds",
    "Accepted to first started (a scheduled job's delay included: its record keeps no due time)",
    ["kind"],
    buckets=WAIT_BUCKETS,
    registry=registry,
)
END_TO_END = Histogram(
    "gateway_end_to_end_seconds",
    "Accepted to a final status (succeeded, failed, dead)",
    ["kind"],
    buckets=WAIT_BUCKETS,
    registry=registry,
)
DELIVERIES = Counter(
    "gateway_deliveries",
    "Delivery attempts by outcome and the receiver's status class (none: no answer)",
    ["outcome", "status_class"],
    registry=registry,
)
DELIVERY_DURATION = Histogram(
    "gateway_delivery_duration_seconds",
    f"One delivery attempt, by destination host (the first {TOP_HOSTS} seen; the rest: other)",
    ["host"],
    buckets=RUN_BUCKETS[:-3],
    registry=registry,
)
IN_FLIGHT = Gauge(
    "gateway_in_flight",
    "Tasks running now",
    ["queue"],
    multiprocess_mode="livesum",
    registry=registry,
)
POOL_SLOTS = Gauge(
    "gateway_pool_slots",
    "Tasks this worker runs at once (its pool's concurrency)",
    ["queue"],
    multiprocess_mode="livemax",
    registry=registry,
)

# (port, queues, slots) `gateway worker` asks `serve` for once the worker is ready
planned: tuple[int, list[str], int] | None = None

_claimed: ContextVar[float | None] = ContextVar("gateway_job_claimed", default=None)
_hosts: set[str] = set()
_hosts_lock = threading.Lock()


def job_claimed(job: dict[str, Any]) -> None:
    """A job's attempt started: note when, and its wait in the queue on a first attempt."""
    _claimed.set(time.perf_counter())
    if int(job.get("attempts") or 0) == 1:
        waited = _age(job.get("created_at"))
        if waited is not None:
            QUEUE_WAIT.labels(job["kind"]).observe(waited)


def job_retried(job: dict[str, Any]) -> None:
    """A job's attempt failed and a retry waits in the schedule."""
    _attempt_done(job, "retried")


def job_finished(job: dict[str, Any], status: str, error: dict[str, str] | None = None) -> None:
    """A job reached a final status (succeeded, failed, dead); a failure is logged."""
    _attempt_done(job, status)
    if error:
        log.warning("job %s %s: %s: %s", job["id"], status, error["code"], error["detail"][:300])
    age = _age(job.get("created_at"))
    if age is not None:
        END_TO_END.labels(job["kind"]).observe(age)


def _attempt_done(job: dict[str, Any], outcome: str) -> None:
    kind = job["kind"] if job["kind"] in KINDS else "unknown"
    JOBS.labels(kind, outcome).inc()
    started = _claimed.get()
    if started is not None:
        JOB_DURATION.labels(kind).observe(time.perf_counter() - started)
        _claimed.set(None)


def delivery_done(
    url: str, status: str, status_code: int | None, latency_ms: float, error: str | None = None
) -> None:
    """One delivery attempt ended (delivered, retrying, failed, dead); a failure is logged."""
    outcome = "retried" if status == "retrying" else status
    status_class = f"{status_code // 100}xx" if status_code else "none"
    DELIVERIES.labels(outcome, status_class).inc()
    DELIVERY_DURATION.labels(host_label(url)).observe(latency_ms / 1000)
    if outcome != "delivered":
        log.warning(
            "delivery to %s %s (HTTP %s): %.300s", redact_url(url), outcome, status_code, error
        )


def host_label(url: str) -> str:
    """The URL's host if it is among the first `TOP_HOSTS` seen here, else ``other``."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return OTHER_HOST
    if host in _hosts:
        return host
    with _hosts_lock:
        if len(_hosts) < TOP_HOSTS and host:
            _hosts.add(host)
            return host
    return OTHER_HOST


def task_started(queue: str) -> None:
    """A task began running on this worker (Celery's task_prerun)."""
    IN_FLIGHT.labels(queue).inc()


def task_ended(queue: str) -> None:
    """A task ended, whatever its outcome (Celery's task_postrun)."""
    IN_FLIGHT.labels(queue).dec()


def _age(iso: Any) -> float | None:
    if not iso:
        return None
    try:
        return max(0.0, time.time() - datetime.fromisoformat(str(iso)).timestamp())
    except ValueError:
        return None


def plan(port: int, queues: list[str], slots: int) -> None:
    """What `serve` will do when the worker is ready (called by `gateway worker`)."""
    global planned
    planned = (port, queues, slots)


def serve(port: int, queues: list[str], slots: int) -> None:
    """Serve this worker's metrics on ``port`` (0: off); a taken port is logged, not fatal."""
    # series at 0 from the start (in workers only, not in whatever else imports this module): a
    # rate over a counter that appears late misses its first increase
    for kind in KINDS:
        for outcome in JOB_OUTCOMES:
            JOBS.labels(kind, outcome)
    if "callbacks" in queues:
        for outcome in DELIVERY_OUTCOMES:
            for status_class in STATUS_CLASSES:
                DELIVERIES.labels(outcome, status_class)
    for queue in queues:
        POOL_SLOTS.labels(queue).set(slots)
        IN_FLIGHT.labels(queue)
    if not port:
        return
    served = registry
    if MULTIPROCESS:
        # the parent sums what its children wrote (their files), not its own registry
        served = CollectorRegistry()
        served.register(_LiveChildren())
    try:
        start_http_server(port, registry=served)
    except OSError as exc:
        log.warning("metrics: cannot listen on port %s (%s); this worker runs without", port, exc)
        return
    log.info("metrics: serving Prometheus text on port %s", port)


class _LiveChildren:
    """The children's files, summed at each scrape, after forgetting the live gauges of children
    that are gone: a child killed mid-task (SIGKILL, OOM) never says so, and its in-flight count
    would stay up for good."""

    def __init__(self) -> None:
        self.path = os.environ[MULTIPROC_ENV]
        self.files = _multiprocess.MultiProcessCollector(None, self.path)  # type: ignore[no-untyped-call]

    def collect(self) -> Any:
        """Prune dead children's live gauges, then the sum of every file."""
        for name in os.listdir(self.path):
            if name.startswith("gauge_live"):
                pid = int(name.rsplit("_", 1)[1].removesuffix(".db"))
                if not _alive(pid):
                    child_exited(pid)
        return self.files.collect()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_exited(pid: int) -> None:
    """A prefork child is gone: its live gauges stop counting (multiprocess mode only)."""
    if MULTIPROCESS:
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
