"""One asyncio event loop per worker process, on its own thread, for handlers that are coroutines.

Celery 5 has no async tasks. Sync task code waits on a coroutine with `run()`, which works in any
pool: from a pool thread it hands the coroutine to the loop and waits on the future; inside a task
of the loop pool (tasks/pool.py), which runs tasks as greenlets on the loop thread itself, it
switches back to the loop, which awaits the coroutine while other tasks run. Either way one process
holds many network calls in flight on one loop and one shared HTTP client.

The greenlet bridge is SQLAlchemy's (`greenlet_spawn` / `await_only`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from celery.exceptions import TimeLimitExceeded
from greenlet import getcurrent, greenlet

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
    """Run ``coro`` on the process loop and wait for its result (from any sync task code)."""
    current = getcurrent()
    if isinstance(current, _TaskGreenlet):
        if timeout is not None:
            return current.driver.switch(asyncio.wait_for(coro, timeout))  # type: ignore[no-any-return]
        return current.driver.switch(coro)  # type: ignore[no-any-return]
    return asyncio.run_coroutine_threadsafe(coro, get_loop()).result(timeout)


class _TaskGreenlet(greenlet):  # type: ignore[misc]
    """Sync code running on the loop thread; its driver is the coroutine awaiting on its behalf."""

    def __init__(self, fn: Callable[..., Any], driver: greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver


async def greenlet_spawn(fn: Callable[..., T], *args: Any, time_limit: float | None = None) -> T:
    """Run sync ``fn`` in a greenlet on this loop, awaiting what it hands over, until it returns.

    Past ``time_limit`` seconds the coroutine it waits on is cancelled and ``TimeLimitExceeded``
    (Celery's hard limit) is raised in ``fn`` there; code that runs without waiting is not
    interrupted, it meets the limit at its next wait.
    """
    task = _TaskGreenlet(fn, getcurrent())
    # one context for the task and the coroutines it waits on (run here, in this asyncio task's):
    # what the task binds, its log ids above all (core/logs.py), is seen while they run too
    task.gr_context = getcurrent().gr_context
    deadline = None if time_limit is None else asyncio.get_running_loop().time() + time_limit
    handed: Any = task.switch(*args)
    while not task.dead:
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                value = await handed
        except TimeoutError:
            if scope.expired():
                handed = task.throw(TimeLimitExceeded(time_limit))
            else:
                handed = task.throw(*sys.exc_info())
        except BaseException:
            handed = task.throw(*sys.exc_info())
        else:
            handed = task.switch(value)
    result: T = handed
    return result
