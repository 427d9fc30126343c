"""Dependencies as Annotated aliases: settings, Redis, the job store, the caller's API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from redis.asyncio import Redis

from core.settings import Settings
from gateway.auth import authenticate, authenticate_admin, match_key
from tasks.keys import Keys
from tasks.store import JobStore


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> Redis:
    """The process's Redis client, opened by the lifespan."""
    client: Redis = request.app.state.redis
    return client


async def get_jobs(request: Request) -> JobStore:
    """The job store on the process's Redis client."""
    store: JobStore = request.app.state.jobs
    return store


async def get_keys(request: Request) -> Keys:
    """Redis key names under the configured prefix."""
    keys: Keys = request.app.state.keys
    return keys


async def get_owner(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The authenticated caller (401 otherwise)."""
    hashes: tuple[str, ...] = request.app.state.api_key_hashes
    return authenticate(authorization, hashes)


async def get_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The authenticated caller holding an admin key (401 without a valid key, 403 plain)."""
    state = request.app.state
    return authenticate_admin(authorization, state.api_key_hashes, state.admin_key_hashes)


async def get_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> tuple[str, bool]:
    """The authenticated caller (401 otherwise) and whether its key is an admin key."""
    state = request.app.state
    owner = authenticate(authorization, state.api_key_hashes)
    _, _, key = (authorization or "").partition(" ")
    return owner, match_key(key, state.admin_key_hashes) is not None


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
KeysDep = Annotated[Keys, Depends(get_keys)]
OwnerDep = Annotated[str, Depends(get_owner)]
AdminDep = Annotated[str, Depends(get_admin)]
CallerDep = Annotated[tuple[str, bool], Depends(get_caller)]
