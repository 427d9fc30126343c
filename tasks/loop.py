"""One asyncio event loop per worker process, on its own thread, for handlers that are coroutines.

Celery 5 has no async tasks. Pool threads hand coroutines to this loop and wait on the future, so
one process holds many network calls in flight on one loop and one shared HTTP client.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


def get_loop() -> asyncio.AbstractEventLoop:
    """This process's loop, started on first use (and again in a forked child)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="gateway-loop", daemon=True).start()
            _loop, _pid = loop, os.getpid()
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the process loop and wait for its result from a pool thread."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop()).result(timeout)
