"""The app, composed: settings, Redis in the lifespan, routers, error handlers."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core.configs import outbound_policy
from core.destinations import check_destinations
from core.settings import Settings, get_settings
from core.sources import load_sources
from gateway import console, errors, openapi
from gateway.metrics import HttpMetrics, Metrics
from gateway.redis_client import open_redis
from gateway.routes import (
    dead_letters,
    endpoints,
    example,
    files,
    health,
    job_stream,
    jobs,
    webhooks,
)
from gateway.webhooks.verifiers import inbound_sources
from tasks.dead_letters import DeadLetters
from tasks.endpoint_store import EndpointStore
from tasks.events import EventStore
from tasks.keys import Keys
from tasks.pipelined import PipelinedRedis
from tasks.store import JobStore

GC_GEN0_THRESHOLD = 20_000


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway for ``settings`` (read from the environment when omitted)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_destinations(app.state.webhook_sources, app.state.outbound_policy)
        app.state.redis = open_redis(settings)
        app.state.fast_redis = PipelinedRedis(
            settings.redis_address, settings.redis_timeout_seconds
        )
        app.state.jobs = JobStore(
            app.state.redis, app.state.keys, settings.job_ttl_seconds, app.state.fast_redis
        )
        app.state.dead_letters = DeadLetters(
            app.state.redis, app.state.keys, settings.job_ttl_seconds
        )
        app.state.endpoints = EndpointStore(app.state.redis, app.state.keys, app.state.dead_letters)
        app.state.events = EventStore(
            app.state.redis,
            app.state.keys,
            settings.job_ttl_seconds,
            settings.webhook_dedup_seconds,
            app.state.fast_redis,
        )
        # Everything built so far lives as long as the process: keep it out of the collector's
        # way, and collect young objects less often (requests allocate many short-lived ones).
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        yield
        await app.state.fast_redis.close()
        await app.state.redis.aclose()
        if app.state.metrics is not None:
            app.state.metrics.close()

    app = FastAPI(title="Webhook & job gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.keys = Keys(settings.redis_key_prefix)
    app.state.api_key_hashes = settings.api_key_hashes()
    app.state.admin_key_hashes = settings.admin_key_hashes()
    app.state.outbound_policy = outbound_policy(settings)
    # parsed, checked and its secrets read once, here: a bad file stops startup, not a request
    app.state.webhook_sources = inbound_sources(
        load_sources(settings.webhook_sources_file, app.state.outbound_policy)
    )
    errors.install(app)
    openapi.install(app, settings)
    # Routes go onto the app itself, hot paths first: include_router (FastAPI 0.16x) wraps each
    # router in a lazy _IncludedRouter that re-checks its routes' version on every request, which
    # cost ~9 % of a job submission's CPU (bench/README.md).
    # the webhook route (one) before the job routes (seven, per kind): each route passed costs a
    # match on every request
    for router in (
        webhooks.router,
        jobs.router,
        example.router,
        health.router,
        files.router,
        dead_letters.router,
        webhooks.events_router,
        endpoints.router,
        job_stream.router,
    ):
        app.router.routes.extend(router.routes)
    app.state.metrics = None
    if settings.metrics_enabled:
        app.state.metrics = Metrics(settings, app.state.keys, app.state.webhook_sources)
        app.add_middleware(HttpMetrics, metrics=app.state.metrics)
        app.router.routes.append(app.state.metrics.route())
    console.install(app)
    return app
