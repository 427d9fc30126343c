"""Probes for orchestrators: /healthz (the process answers), /readyz (Redis answers too)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import RedisDep
from gateway.errors import responses

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
async def readyz(redis: RedisDep) -> dict[str, str]:
    """Redis is reachable (503 redis_unavailable otherwise, via the central handler)."""
    await redis.ping()
    return {"status": "ready"}
