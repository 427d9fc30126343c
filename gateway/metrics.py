"""GET /metrics: the API's request counters, webhook outcomes and the queues' state, for Prometheus.

Served on the API's own port without an API key, as most exporters are: a scraper then needs no
secret and no second port, and the page holds counts, route templates, queue names and configured
source names only, never an id, a path or a payload. Bind the port to a private network (compose
binds it to loopback by default) or set METRICS_ENABLED=false to take the route away.

Labels are bounded by construction: the route is the matched route's template ("unmatched" when
none matched), the method one of a fixed set, the webhook source a configured one or "unknown",
the outcome one of the error codes our code raises. Each app has a registry of its own, so tests
can build several apps in one process. Under `gateway api --workers N` the processes share their
counts through prometheus-client's multiprocess mode (gateway/cli.py sets its directory), so a
scrape answered by any of them sees all of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import redis
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings
from tasks.keys import Keys
from tasks.monitor import snapshot

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"
UNKNOWN_SOURCE = "unknown"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# the API answers in milliseconds; the default buckets start at 5 ms
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# error codes of the webhook path, named as operators read them; other codes keep their own name
WEBHOOK_OUTCOMES = {
    "payload_too_large": "too_large",
    "webhook_bad_signature": "bad_signature",
    "webhook_missing_header": "missing_signature",
    "webhook_malformed_header": "malformed_signature",
    "webhook_timestamp_out_of_tolerance": "stale",
}


class QueueCollector(Collector):
    """Reads the queues' state from Redis at scrape time (tasks/monitor.py): two round trips."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("gateway_redis_up", "1 if Redis answered this scrape's reads")
        try:
            state = snapshot(self.client, self.keys)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "gateway_queue_depth", "Messages waiting on the queue", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "gateway_queue_oldest_age_seconds",
            "Since the oldest waiting message's work was accepted (0: empty)",
            labels=["queue"],
        )
        alive = GaugeMetricFamily(
            "gateway_workers_alive", "Worker processes consuming the queue", labels=["queue"]
        )
        for queue in state.queues:
            depth.add_metric([queue.name], queue.depth)
            if queue.oldest_age_seconds is not None:  # a plain task carries no time: no sample
                age.add_metric([queue.name], queue.oldest_age_seconds)
        for name, count in state.workers_alive.items():
            alive.add_metric([name], count)
        dead = GaugeMetricFamily(
            "gateway_dead_letters", "Dead letters waiting, by job kind", labels=["kind"]
        )
        for kind, count in sorted(state.dead_letters.items()):
            dead.add_metric([kind], count)
        yield depth
        yield age
        yield alive
        yield dead
        yield GaugeMetricFamily(
            "gateway_scheduled_jobs", "Entries in the schedule", value=state.scheduled
        )
        yield GaugeMetricFamily(
            "gateway_schedule_lag_seconds",
            "How late the earliest due schedule entry is (0: none due)",
            value=state.schedule_lag_seconds,
        )


class Metrics:
    """One app's registry: HTTP counters, webhook outcomes, the queue collector."""

    def __init__(self, settings: Settings, keys: Keys, sources: Mapping[str, Any]) -> None:
        # auto_describe would run the queue collector (read Redis) at registration, in create_app
        self.registry = CollectorRegistry(auto_describe=False)
        self.sources = frozenset(sources)
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer, by route template",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.webhooks = Counter(
            "gateway_webhooks_received",
            "Inbound webhooks by source and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        timeout = settings.metrics_redis_timeout_seconds
        self.client = redis.Redis.from_url(
            settings.redis_address,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        # what a scrape reads: this process's registry, or under `gateway api --workers N` every
        # process's counts from the files prometheus-client keeps in PROMETHEUS_MULTIPROC_DIR
        self.exposed = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            self.exposed = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.exposed)  # type: ignore[no-untyped-call]
        else:
            ProcessCollector(registry=self.registry)
        self.exposed.register(QueueCollector(self.client, keys))
        # label children by key: .labels() costs a lock and a tuple build per call
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._webhook_children: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (hot path: one dict lookup when the labels were seen)."""
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def webhook(self, source: str, outcome: str) -> None:
        """Count one inbound webhook's outcome (an error code or accepted/duplicate/ignored)."""
        key = (source, outcome)
        child = self._webhook_children.get(key)
        if child is None:
            label = source if source in self.sources else UNKNOWN_SOURCE
            child = self.webhooks.labels(label, WEBHOOK_OUTCOMES.get(outcome, outcome))
            if source in self.sources:  # bounded: configured sources only
                self._webhook_children[key] = child
        child.inc()

    async def page(self, _: Request) -> Response:
        """The exposition, built off the event loop (the queue collector reads Redis, blocking)."""
        body = await anyio.to_thread.run_sync(generate_latest, self.exposed)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def route(self) -> APIRoute:
        """GET /metrics, kept out of the OpenAPI document (it is not the API)."""
        # an APIRoute: FastAPI's router puts only those in scope["route"], what HttpMetrics reads
        return APIRoute(
            "/metrics", self.page, methods=["GET"], include_in_schema=False, response_class=Response
        )

    def close(self) -> None:
        """Close the scrape's Redis connections."""
        self.client.close()


class HttpMetrics:
    """Pure ASGI middleware timing and counting every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # set by FastAPI's router on a match of an APIRoute
            template = getattr(route, "path", None) or UNMATCHED
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - start)


def count_webhook(request: Request, source: str, outcome: str) -> None:
    """Count an inbound webhook's outcome on the app's metrics, if metrics are on."""
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.webhook(source, outcome)
