"""The API's Redis client: short timeouts, so an outage is a quick 503 rather than a hang."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core.settings import Settings


def open_redis(settings: Settings) -> Redis:
    """A pooled async client; one retry only for a dropped connection (e.g. Redis restarted)."""
    return Redis.from_url(
        settings.redis_address,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
        max_connections=512,
    )
