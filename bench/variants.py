"""The gateway with candidate optimisations patched in at import time, to price them before anyone
edits gateway/ or tasks/. Serve with

    python bench/bench_ingest.py --phases bare,gateway --gateway-target variants:create_app \
        --server-env BENCH_VARIANT=async_deps

BENCH_VARIANT is a comma-separated list of:
  async_deps  the dependencies (settings, job store, API-key check) as `async def`: FastAPI runs a
              plain `def` dependency in the threadpool, one thread hop per dependency per request
  no_redis    JobStore.create answers at once without touching Redis (an upper bound: what the
              request path costs without the Lua round trip; never a design option)
  no_uuid     uuid4 (two os.urandom syscalls per request) replaced by a counter (a bound as well)
  no_job_index  the create script without its two index ZADDs (tasks/job_index.py): what the job
              listing's indexes cost the ingest path
Nothing here is used by the gateway itself.
"""

from __future__ import annotations

import itertools
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request


def create_app() -> FastAPI:
    variants = {v for v in os.environ.get("BENCH_VARIANT", "").split(",") if v}
    import gateway.deps as deps

    if "async_deps" in variants:

        async def get_settings(request: Request) -> Any:
            return request.app.state.settings

        async def get_jobs(request: Request) -> Any:
            return request.app.state.jobs

        async def get_owner(
            request: Request, authorization: Annotated[str | None, Header()] = None
        ) -> str:
            return deps.authenticate(authorization, request.app.state.api_key_hashes)

        deps.SettingsDep = Annotated[deps.Settings, Depends(get_settings)]  # type: ignore[misc]
        deps.JobsDep = Annotated[deps.JobStore, Depends(get_jobs)]  # type: ignore[misc]
        deps.OwnerDep = Annotated[str, Depends(get_owner)]  # type: ignore[misc]

    if "no_redis" in variants:
        from tasks.store import JobStore

        async def create(self: Any, *args: Any, **kwargs: Any) -> None:
            return None

        JobStore.create = create  # type: ignore[method-assign]

    if "no_uuid" in variants:
        import uuid

        counter = itertools.count()
        uuid.uuid4 = lambda: uuid.UUID(int=next(counter))  # type: ignore[assignment]

    if "no_job_index" in variants:
        import tasks.store as store

        lines = store._CREATE.splitlines(keepends=True)
        store._CREATE = "".join(
            line
            for line in lines
            if "'ZADD', KEYS[7]" not in line and "'ZADD', KEYS[8]" not in line
        )

    from gateway.main import create_app as real

    return real()
