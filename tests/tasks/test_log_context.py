"""Log ids per task in both in-flight pools: threads, and the loop pool's greenlets, whose
coroutines (a handler's network calls) run on the loop in the task's context."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from core import logs
from tasks import loop

log = logging.getLogger("tests.log_context")


class Capture(logging.Handler):
    """Keeps every line, formatted as the workers format them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.GatewayFormatter("json"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)


async def handler_call(n: int) -> None:
    """A handler's coroutine: it waits (others run meanwhile), then logs."""
    await asyncio.sleep(random.random() / 100)
    log.info("handler of %s", n)


def task(n: int) -> None:
    """Task code as tasks/runtime.py runs it: bind at the claim, wait on the loop, log."""
    logs.bind(job_id=f"job-{n}", attempt=1)
    log.info("claimed %s", n)
    loop.run(handler_call(n))
    log.info("finished %s", n)
    logs.clear()


def check(lines: list[dict[str, object]], count: int) -> None:
    assert len(lines) == 3 * count
    for line in lines:
        n = str(line["message"]).rsplit(" ", 1)[1]
        assert line["job_id"] == f"job-{n}", line


def test_each_loop_pool_greenlet_and_its_coroutines_log_with_its_own_ids(
    captured: Capture,
) -> None:
    async def spawn_all() -> None:
        # as tasks/pool.py does: one asyncio task per Celery task, each driving a greenlet
        running = [asyncio.create_task(loop.greenlet_spawn(task, n)) for n in range(50)]
        await asyncio.gather(*running)

    asyncio.run_coroutine_threadsafe(spawn_all(), loop.get_loop()).result(10)
    check(captured.lines, 50)


def test_each_pool_thread_and_its_coroutines_log_with_its_own_ids(captured: Capture) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(task, range(40)))
    check(captured.lines, 40)
