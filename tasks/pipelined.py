"""A pipelined Redis connection for the API's hot path: the job create script, one round trip each.

redis-py's asyncio client spends more CPU per command (pool checkout, packing, retry wrapper, the
response path) than the rest of a job submission together (bench/README.md). Here every caller
writes its command to one shared connection at once and awaits its own reply; replies arrive in
order and are parsed by hiredis. Many requests in flight share one socket, as Redis pipelining
intends. Failures surface as redis-py's exceptions, so the API's 503 handler covers them:
connection refused or lost -> ConnectionError; no reply within ``timeout`` -> TimeoutError (and the
connection is dropped, since its reply stream can no longer be trusted).

The invariant is one request, one reply, in order: a command is packed before a reply slot is
taken (one that can't be encoded fails only its caller), a transaction is packed whole before any
of it is queued, and a lost connection fails every waiting caller and is never reused
(tests/tasks/test_pipelined_faults.py drives it at random). The wire format (packing, error
replies) is tasks/pipelined_codec.py; the address and the connection setup, tasks/pipelined_url.py.
What is left is one piece on purpose (~250 lines): the connection, its queue of waiting callers and
the failure paths that keep that invariant must be read together.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tasks.pipelined_codec import EXEC, MULTI, error_of, pack
from tasks.pipelined_url import address_of


class _Batch:
    """Stands in ``pending`` for each command of one transaction, in order, and resolves one
    future with all their replies (MULTI's, each QUEUED, EXEC's) once the last has arrived.

    One future per command cost the worker a tenth of its CPU per job once a job's final write
    grew to twenty commands (a future, a gather child and a callback each, for replies that are
    only QUEUED). An error reply is kept in its command's place, as gather(return_exceptions=True)
    did; a failed connection fails the whole batch.
    """

    __slots__ = ("future", "replies", "size")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future, self.size = future, size
        self.replies: list[Any] = []

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply: Any) -> None:
        self.replies.append(reply)
        if len(self.replies) == self.size:
            self.future.set_result(self.replies)

    def set_exception(self, exc: BaseException) -> None:
        if isinstance(exc, ResponseError):  # this command's error reply
            self.set_result(exc)
        elif not self.future.done():  # the connection failed: so did the transaction
            self.future.set_exception(exc)


class _Protocol(asyncio.Protocol):
    """One connection's reply stream: ``pending`` holds one future per command written, in order.

    The invariant everything rests on: a future enters ``pending`` in the same synchronous step
    that puts its packed command in ``outbox``, and leaves it only for its own reply, or when the
    connection fails (then every pending future fails with it and the connection is never reused).
    """

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[tuple[asyncio.Future[Any] | _Batch, float]] = deque()
        # an asyncio.Transport, or uvloop's equivalent (which does not subclass it)
        self.transport: Any = None
        self.outbox: list[bytes] = []
        self.closed = False

    def flush(self) -> None:
        if self.outbox and not self.closed:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not self.pending:  # a reply nobody asked for: the stream can't be trusted
                self.fail(RedisConnectionError("unexpected reply from Redis"))
                return
            future, _ = self.pending.popleft()
            if future.done():  # its caller gave up (cancelled); the reply is still its own
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(error_of(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        self.outbox.clear()
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                # one exception object each: every caller that raises a shared one appends its
                # frames to the same traceback, so after a lost connection with 1500 callers the
                # last one logged ~a million lines (docs/chaos.md, finding 1)
                future.set_exception(copy.copy(exc))
        if self.transport is not None:
            self.transport.abort()


class Commands:
    """Redis commands gathered for one ``PipelinedRedis.transaction``.

    The methods are spelled like the redis-py pipeline methods that code shared with redis-py
    callers uses (tasks/deliveries.py add_delivery), so either can collect the same writes.
    """

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def hset(self, key: str, *, mapping: Mapping[Any, Any]) -> None:
        self.items.append(("HSET", key, *(part for pair in mapping.items() for part in pair)))

    def expire(self, key: str, seconds: int) -> None:
        self.items.append(("EXPIRE", key, seconds))

    def persist(self, key: str) -> None:
        self.items.append(("PERSIST", key))

    def lpush(self, key: str, *values: Any) -> None:
        self.items.append(("LPUSH", key, *values))

    def rpush(self, key: str, *values: Any) -> None:
        self.items.append(("RPUSH", key, *values))

    def zadd(self, key: str, mapping: Mapping[Any, float]) -> None:
        self.items.append(("ZADD", key, *(part for m, v in mapping.items() for part in (v, m))))

    def publish(self, channel: str, message: str) -> None:
        self.items.append(("PUBLISH", channel, message))

    def hincrby(self, key: str, name: str, amount: int = 1) -> None:
        self.items.append(("HINCRBY", key, name, amount))


class PipelinedRedis:
    """One Redis connection shared by every caller of a process (re-opened after a failure)."""

    def __init__(self, url: str, timeout: float) -> None:
        # a URL it cannot honour stops the process here, at start-up, not at the first request
        self.address = address_of(url)
        self.setup = self.address.setup
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, *args: Any) -> Any:
        """Send one command; returns its reply or raises redis-py's exception for it."""
        packed = pack(args)  # before the connection: a command that can't be sent takes no slot
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        if protocol.closed:  # lost while this caller waited for the connection
            raise RedisConnectionError("connection to Redis lost")
        # the hot path (one job create per request): _send's steps for a single command
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        protocol.pending.append((future, time.monotonic() + self.timeout))
        protocol.outbox.append(packed)
        if len(protocol.outbox) == 1:
            loop.call_soon(protocol.flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check)
        return await future

    async def eval_script(self, script: str, sha: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script once if Redis does not know it (restart, flush)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def transaction(self, commands: Commands) -> list[Any]:
        """MULTI, ``commands``, EXEC; returns EXEC's replies or raises the first error.

        As in any Redis transaction, a command that fails when it runs (WRONGTYPE) does not undo
        the others; the error is raised all the same so the caller does not carry on unaware.
        """
        # all packed before any is queued: one that can't be encoded leaves no half transaction
        packed = [MULTI, *(pack(command) for command in commands.items), EXEC]
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        # queued in one step, with no await in between: no other caller's command lands inside
        batch = _Batch(asyncio.get_running_loop().create_future(), len(packed))
        self._queue(protocol, packed, [batch] * len(packed))
        replies = await batch.future
        results: list[Any] = replies[-1] if isinstance(replies[-1], list) else []
        for reply in (*replies, *results):
            if isinstance(reply, BaseException):
                raise error_of(reply) if isinstance(reply, ResponseError) else reply
        return results

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionError."""
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("client closed"))
            self._protocol = None

    def _send(self, protocol: _Protocol, packed: list[bytes]) -> list[asyncio.Future[Any]]:
        """Queue already packed commands and one reply future each, in one synchronous step."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in packed]
        self._queue(protocol, packed, futures)
        return futures

    def _queue(
        self,
        protocol: _Protocol,
        packed: list[bytes],
        sinks: list[asyncio.Future[Any]] | list[_Batch],
    ) -> None:
        """Queue packed commands with their reply sinks, one each, in one synchronous step."""
        loop = asyncio.get_running_loop()
        if protocol.closed:  # lost while this caller waited for the connection
            raise RedisConnectionError("connection to Redis lost")
        deadline = time.monotonic() + self.timeout
        protocol.pending.extend((sink, deadline) for sink in sinks)
        # commands of one event-loop pass leave in one write: one syscall for many requests
        first = not protocol.outbox
        protocol.outbox.extend(packed)
        if first:
            loop.call_soon(protocol.flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check)

    def _check(self) -> None:
        """Drop the connection if its oldest call has waited past the timeout."""
        self._watchdog = None
        protocol = self._protocol
        if protocol is None or not protocol.pending:
            return
        oldest = protocol.pending[0][1]
        if time.monotonic() >= oldest:
            protocol.fail(RedisTimeoutError(f"no reply from Redis within {self.timeout}s"))
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(max(0.01, oldest - time.monotonic()), self._check)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one reconnect for every caller waiting on it
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            address = self.address
            try:
                if address.path is not None:
                    opening = loop.create_unix_connection(_Protocol, address.path)
                else:
                    opening = loop.create_connection(
                        _Protocol,
                        address.host,
                        address.port,
                        ssl=address.tls,
                        server_hostname=address.server_hostname,
                    )
                _, protocol = await asyncio.wait_for(opening, self.timeout)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            try:
                replies = self._send(protocol, [pack(command) for command in self.setup])
                await asyncio.wait_for(asyncio.gather(*replies), self.timeout)
            except Exception as exc:  # any failure here leaves the connection unusable
                failure = RedisConnectionError(f"Redis refused the connection setup: {exc}")
                protocol.fail(failure)
                if isinstance(exc, RedisConnectionError):  # e.g. LOADING, wrong password
                    raise
                raise failure from exc
            self._protocol = protocol
            return protocol
