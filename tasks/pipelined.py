"""A pipelined Redis connection for the API's hot path: the job create script, one round trip each.

redis-py's asyncio client spends more CPU per command (pool checkout, packing, retry wrapper, the
response path) than the rest of a job submission together (bench/README.md). Here every caller
writes its command to one shared connection at once and awaits its own reply; replies arrive in
order and are parsed by hiredis. Many requests in flight share one socket, as Redis pipelining
intends. Failures surface as redis-py's exceptions, so the API's 503 handler covers them:
connection refused or lost -> ConnectionError; no reply within ``timeout`` -> TimeoutError (and the
connection is dropped, since its reply stream can no longer be trusted).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
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
        while (reply := self.reader.gets()) is not False:
            future, _ = self.pending.popleft()
            if future.done():
                continue
            if isinstance(reply, ResponseError):
                text = str(reply)
                future.set_exception(NoScriptError(text) if text.startswith("NOSCRIPT") else reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)
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


class PipelinedRedis:
    """One Redis connection shared by every caller of a process (re-opened after a failure)."""

    def __init__(self, url: str, timeout: float) -> None:
        options = parse_url(url)
        self.host = str(options.get("host", "127.0.0.1"))
        self.port = int(options.get("port", 6379))
        self.ssl = url.startswith("rediss://")
        self.setup: list[tuple[Any, ...]] = []
        if options.get("password"):
            user = options.get("username")
            auth = ("AUTH", user, options["password"]) if user else ("AUTH", options["password"])
            self.setup.append(auth)
        if options.get("db"):
            self.setup.append(("SELECT", options["db"]))
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, *args: Any) -> Any:
        """Send one command; returns its reply or raises redis-py's exception for it."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await self._send(protocol, args)

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
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        # written back to back with no await in between: no other caller's command lands inside
        sent = [self._send(protocol, ("MULTI",))]
        sent += [self._send(protocol, command) for command in commands.items]
        sent.append(self._send(protocol, ("EXEC",)))
        replies = await asyncio.gather(*sent, return_exceptions=True)
        results: list[Any] = replies[-1] if isinstance(replies[-1], list) else []
        for reply in (*replies, *results):
            if isinstance(reply, BaseException):
                raise reply
        return results

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionError."""
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("client closed"))
            self._protocol = None

    def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.pending.append((future, time.monotonic() + self.timeout))
        # commands of one event-loop pass leave in one write: one syscall for many requests
        protocol.outbox.append(hiredis.pack_command(args))
        if len(protocol.outbox) == 1:
            asyncio.get_running_loop().call_soon(protocol.flush)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.timeout, self._check)
        return future

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
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port, ssl=self.ssl or None),
                    self.timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            try:
                replies = [self._send(protocol, command) for command in self.setup]
                await asyncio.wait_for(asyncio.gather(*replies), self.timeout)
            except (ResponseError, TimeoutError) as exc:
                protocol.fail(RedisConnectionError(f"Redis refused the connection setup: {exc}"))
                raise RedisConnectionError(f"Redis refused the connection setup: {exc}") from exc
            self._protocol = protocol
            return protocol
