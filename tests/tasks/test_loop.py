"""The greenlet bridge of tasks/loop.py: sync task code waiting on coroutines, no thread each."""

from __future__ import annotations

import asyncio

import pytest

from tasks import loop


def test_sync_code_in_task_greenlets_waits_on_coroutines_all_at_once() -> None:
    n = 200

    async def main() -> list[int]:
        waiting = 0
        everyone_in = asyncio.Event()

        async def call(i: int) -> int:
            nonlocal waiting
            waiting += 1
            if waiting == n:
                everyone_in.set()
            await everyone_in.wait()  # returns only once all n calls are waiting together
            return i * 2

        def task_body(i: int) -> int:  # plain sync code, as a Celery task's
            return loop.run(call(i)) + 1

        spawned = (loop.greenlet_spawn(task_body, i) for i in range(n))
        return list(await asyncio.wait_for(asyncio.gather(*spawned), 10))

    assert asyncio.run(main()) == [i * 2 + 1 for i in range(n)]


def test_an_error_in_the_coroutine_is_raised_in_the_sync_code_which_can_carry_on() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("from the coroutine")

    async def answer() -> str:
        return "then this"

    def task_body() -> list[str]:
        seen = []
        try:
            loop.run(fails())
        except ValueError as exc:
            seen.append(str(exc))
        seen.append(loop.run(answer()))
        return seen

    async def main() -> list[str]:
        return await loop.greenlet_spawn(task_body)

    assert asyncio.run(main()) == ["from the coroutine", "then this"]


def test_a_timeout_given_to_run_applies_inside_a_task_greenlet() -> None:
    def task_body() -> None:
        loop.run(asyncio.sleep(10), timeout=0.05)

    async def main() -> None:
        await asyncio.wait_for(loop.greenlet_spawn(task_body), 5)

    with pytest.raises(TimeoutError):
        asyncio.run(main())


def test_an_error_of_the_sync_code_itself_comes_out_of_greenlet_spawn() -> None:
    def task_body() -> None:
        raise KeyError("sync")

    with pytest.raises(KeyError):
        asyncio.run(loop.greenlet_spawn(task_body))
