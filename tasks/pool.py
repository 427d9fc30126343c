"""A Celery pool that runs every task on this process's event loop, one greenlet per task.

The threads pool gives each in-flight call an OS thread that sits blocked on a future; at 1000
in flight the threads' GIL hand-offs cost more CPU than the calls (bench/README.md). Here Celery's
trace (accept, the task, the ack) runs unchanged inside a greenlet on the loop thread of
tasks/loop.py, and when the task waits on a coroutine (`loop.run`), the greenlet switches back to
the loop, which awaits it while other tasks run: no thread per task, no cross-thread wait.

It is only for queues whose tasks wait through the loop: a task that blocks (sleep, CPU, sync
I/O) holds up every other task in the process, so `files` stays on prefork and `default` /
`webhooks` on threads.
Hard time limits (`task_time_limit`, a task's `time_limit`) are enforced as prefork does in
effect, without killing anything: past the limit the coroutine the task waits on is cancelled and
`TimeLimitExceeded` is raised in the task, which fails it (and, acks_late, acks it). A task busy
without waiting meets the limit at its next wait. Soft limits are not enforced (nor by threads).
`celery.concurrency.base.BasePool` is Celery's internal pool API: Celery's major is pinned and
tests/tasks/test_pool_lifecycle.py runs this pool through the checks the stock pools pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from celery.concurrency.base import BasePool, apply_target

from tasks import loop


class LoopPool(BasePool):  # type: ignore[misc]
    """Celery pool: tasks as greenlets on the process event loop (select with `--pool loop`)."""

    signal_safe = False
    body_can_be_buffer = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Task[Any]] = set()

    def on_start(self) -> None:
        self._loop = loop.get_loop()

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> None:
        # Called on the consumer thread: the task starts on the loop thread.
        assert self._loop is not None, "pool not started"
        self._loop.call_soon_threadsafe(
            self._spawn, target, args or (), kwargs or {}, callback, accept_callback, timeout
        )

    def _spawn(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        callback: Callable[..., Any] | None,
        accept_callback: Callable[..., Any] | None,
        timeout: float | None,
    ) -> None:
        assert self._loop is not None
        run = self._loop.create_task(
            loop.greenlet_spawn(
                apply_target,
                target,
                args,
                kwargs,
                callback,
                accept_callback,
                time_limit=timeout or None,
            )
        )
        self._running.add(run)
        run.add_done_callback(self._running.discard)

    def on_stop(self) -> None:
        """Warm shutdown: let the running tasks finish (and ack) before the broker closes."""
        if self._loop is None or not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result()

    async def _drain(self) -> None:
        while self._running:
            await asyncio.wait(set(self._running))

    def on_terminate(self) -> None:
        """Cold shutdown: unacked messages go back to the queue when the broker connection drops."""

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info.update({"max-concurrency": self.limit, "running": len(self._running)})
        return info
