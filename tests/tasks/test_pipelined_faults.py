"""A property of the pipelined connection, driven at random against a real redis-server: every
caller gets exactly its own reply or its own error, whatever the others send and whatever breaks.

Each round starts many callers at once with random commands whose replies identify them (ECHO of a
unique token, GET of a key holding a unique value, a script returning a unique error, transactions
of those), mixed with poison (arguments that cannot be encoded: lone surrogates, objects), huge
values, WRONGTYPE errors, cancelled callers and connection kills (CLIENT KILL from a second
connection). A crossed reply shows up as a caller holding someone else's token. The seed is in the
failure message; PIPELINED_SEED=<n> replays it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio

from gateway.embedded import EmbeddedRedis
from tasks.pipelined import Commands, PipelinedRedis

# At least MIN_ROUNDS whatever the machine's load (within DEADLINE_SECONDS), then more rounds up to
# MAX_ROUNDS while the run is within BUDGET_SECONDS.
BUDGET_SECONDS = 25.0
DEADLINE_SECONDS = 90.0
MAX_ROUNDS = 3000
MIN_ROUNDS = 1000
STATIC_KEYS = 32
FAIL_SCRIPT = "return redis.error_reply(ARGV[1])"
POISON: tuple[Any, ...] = ("\ud800", "ok\udfffok", object(), {"a": 1}, None)


@dataclass
class Op:
    """One caller: what it sends and what it must get back."""

    name: str
    call: Callable[[PipelinedRedis], Awaitable[Any]]
    reply: Any = None
    error: str | None = None  # the exact text of its own server error
    poison: bool = False
    cancel_after: int | None = None  # loop passes before its caller gives up
    absent: str | None = None  # a key that must not exist afterwards (a refused transaction's)


class Plan:
    """Random ops whose replies are unique to them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def token(self) -> str:
        self.n += 1
        extra = self.rng.choice(["", "é", "😀", " ", "\n", "\x00"])
        return f"t{self.n}{extra}{self.rng.getrandbits(32):x}"

    def command(self) -> tuple[tuple[Any, ...], Any, str | None]:
        """A command, its exact reply, or its exact error text (prefix for WRONGTYPE)."""
        roll = self.rng.random()
        if roll < 0.35:
            token = self.token()
            return ("ECHO", token), token.encode(), None
        if roll < 0.6:
            j = self.rng.randrange(STATIC_KEYS)
            return ("GET", f"static:{j}"), f"value-{j}".encode(), None
        if roll < 0.7:
            return ("INCR", f"fresh:{self.token()}"), 1, None
        if roll < 0.85:
            error = "E" + self.token().replace("\n", "").replace("\x00", "")
            return ("EVAL", FAIL_SCRIPT, 0, error), None, error
        if roll < 0.98:
            j = self.rng.randrange(STATIC_KEYS)
            return ("LPUSH", f"static:{j}", "x"), None, "WRONGTYPE"
        size = self.rng.randrange(100_000, 1_000_000)
        token = self.token()
        return ("ECHO", token + "x" * size), (token + "x" * size).encode(), None

    def op(self) -> Op:
        roll = self.rng.random()
        if roll < 0.12:
            poisoned = list(self.command()[0])
            poisoned.insert(self.rng.randrange(1, len(poisoned) + 1), self.rng.choice(POISON))
            return Op("poison", lambda c: c.execute(*poisoned), poison=True)
        if roll < 0.3:
            return self.transaction()
        args, reply, error = self.command()
        op = Op(args[0], lambda c: c.execute(*args), reply=reply, error=error)
        if self.rng.random() < 0.05:
            op.cancel_after = self.rng.randrange(0, 3)
        return op

    def transaction(self) -> Op:
        commands = Commands()
        replies: list[Any] = []
        error: str | None = None
        for _ in range(self.rng.randrange(1, 6)):
            args, reply, err = self.command()
            commands.items.append(args)
            replies.append(reply)
            error = error or err
        if self.rng.random() < 0.25:  # one poisoned command: nothing of it may reach Redis
            key = f"never:{self.token()}"
            commands.items.insert(0, ("SET", key, "1"))
            at = self.rng.randrange(1, len(commands.items) + 1)
            commands.items.insert(at, ("ECHO", self.rng.choice(POISON)))
            return Op("tx-poison", lambda c: c.transaction(commands), poison=True, absent=key)
        return Op("tx", lambda c: c.transaction(commands), reply=replies, error=error)


def judge(op: Op, outcome: Any, connection_trouble: bool) -> str | None:
    """Why ``outcome`` is not ``op``'s own, or None."""
    if op.poison:
        if isinstance(outcome, redis.DataError | UnicodeEncodeError):
            return None
        return f"{op.name}: expected an encoding error, got {outcome!r:.200}"
    if isinstance(outcome, asyncio.CancelledError) and op.cancel_after is not None:
        return None
    if isinstance(outcome, redis.ConnectionError | redis.TimeoutError) and connection_trouble:
        return None
    if op.error is not None:
        # Redis 7 puts "ERR " before a script's error_reply text that has no error code of its own
        text = str(outcome).removeprefix("ERR ")
        if isinstance(outcome, redis.ResponseError) and text.startswith(op.error):
            if op.error == "WRONGTYPE" or text == op.error:
                return None
        return (
            f"{op.name}: expected error {op.error!r}, got {outcome!r:.200}: {str(outcome)!r:.200}"
        )
    if outcome != op.reply:
        return f"{op.name}: expected {op.reply!r:.80}, got {outcome!r:.200}"
    return None


async def run_op(conn: PipelinedRedis, op: Op, passes: int) -> Any:
    for _ in range(passes):
        await asyncio.sleep(0)
    task = asyncio.ensure_future(op.call(conn))
    if op.cancel_after is not None:
        for _ in range(op.cancel_after):
            await asyncio.sleep(0)
        task.cancel()
    try:
        return await task
    except BaseException as exc:  # the outcome under test
        return exc


async def drive(url: str, seed: int) -> tuple[int, dict[str, int]]:
    rng = random.Random(seed)
    plan = Plan(rng)
    conn = PipelinedRedis(url, 10.0)
    admin = redis.asyncio.Redis.from_url(url)
    seen: dict[str, int] = {}
    absent: list[str] = []
    troubled_until = -1
    started = time.monotonic()
    rounds = 0
    try:
        while rounds < MAX_ROUNDS:
            elapsed = time.monotonic() - started
            if elapsed > DEADLINE_SECONDS or (rounds >= MIN_ROUNDS and elapsed > BUDGET_SECONDS):
                break
            ops = [plan.op() for _ in range(rng.randrange(1, 40))]
            calls = [run_op(conn, op, rng.choice((0, 0, 0, 1, 2))) for op in ops]
            killing = rng.random() < 0.08
            if killing:
                # a kill's EOF can reach the client after this round: the next may see it too
                troubled_until = rounds + 1
                calls.append(kill(admin, rng.randrange(0, 4)))
            outcomes = await asyncio.gather(*calls)
            for op, outcome in zip(ops, outcomes, strict=False):
                problem = judge(op, outcome, rounds <= troubled_until)
                assert problem is None, f"round {rounds} (seed {seed}): {problem}"
                kind = type(outcome).__name__ if isinstance(outcome, BaseException) else "reply"
                seen[f"{op.name}:{kind}"] = seen.get(f"{op.name}:{kind}", 0) + 1
                if op.absent:
                    absent.append(op.absent)
            rounds += 1
        for _ in range(3):  # after everything, the connection still serves (reopened if killed)
            try:
                assert await conn.execute("PING") == b"PONG"
                break
            except redis.ConnectionError:
                continue
        else:
            raise AssertionError("the connection never came back")
        leaked = [key for key in absent if await admin.exists(key)]
        assert not leaked, f"a refused transaction still wrote (seed {seed}): {leaked[:3]}"
    finally:
        await conn.close()
        await admin.aclose()
    return rounds, seen


async def kill(admin: redis.asyncio.Redis, passes: int) -> None:
    for _ in range(passes):
        await asyncio.sleep(0)
    await admin.client_kill_filter(_type="normal", skipme=True)


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A redis-server of this test's own: it kills every other client connection of it."""
    server = EmbeddedRedis().start()
    try:
        admin = redis.Redis(port=server.port)
        admin.mset({f"static:{j}": f"value-{j}" for j in range(STATIC_KEYS)})
        admin.close()
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def test_every_caller_gets_its_own_reply_under_poison_errors_and_kills(own_redis: str) -> None:
    seed = int(os.environ.get("PIPELINED_SEED") or random.SystemRandom().getrandbits(32))
    rounds, seen = asyncio.run(drive(own_redis, seed))

    assert rounds >= MIN_ROUNDS, f"only {rounds} rounds within {DEADLINE_SECONDS}s: {seen}"
    # the faults really happened: poison refused, server errors answered, connections lost
    refused = ("DataError", "UnicodeEncodeError")
    assert sum(seen.get(f"poison:{error}", 0) for error in refused) > 100, seen
    assert sum(seen.get(f"tx-poison:{error}", 0) for error in refused) > 20, seen
    assert seen.get("EVAL:ResponseError", 0) > 100, seen
    assert seen.get("ECHO:ConnectionError", 0) + seen.get("GET:ConnectionError", 0) > 5, seen
    assert seen.get("ECHO:CancelledError", 0) + seen.get("GET:CancelledError", 0) > 0, seen
