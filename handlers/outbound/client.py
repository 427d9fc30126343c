"""The guarded httpx client: every connection dials an address checked at connect time."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from handlers.outbound.policy import (
    OutboundPolicy,
    Resolver,
    UrlRejected,
    parse_url,
    resolve_checked,
)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, refuses blocked answers, and dials only the checked IP literal.

    Checking the name at submit time is not enough: DNS may answer differently when the worker
    connects (rebinding). Dialling the literal we just checked closes that window. TLS is not
    affected: httpcore passes the URL's hostname to ``start_tls(server_hostname=...)`` itself
    (``httpcore/_async/connection.py``), so SNI and certificate checks still use the name.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: Resolver | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve and check ``host``, then connect to its first reachable allowed address."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            # A blocked answer raises UrlRejected, which httpx passes through unmapped.
            addresses = await resolve_checked(host, port, self._policy, self._resolver)
        except UrlRejected as exc:
            if exc.code != "url_unresolvable":
                raise
            # The name passed at submit time; failing now is more likely a DNS outage than a
            # bad URL, so it becomes a connect error and the delivery is retried.
            raise httpcore.ConnectError(exc.detail) from None
        error: Exception = httpcore.ConnectError(f"no address to connect to for {host!r}")
        for ip in addresses:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise httpcore.ConnectTimeout(f"connect to {host!r} timed out")
            try:
                return await self._backend.connect_tcp(
                    str(ip),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refuse: a unix socket is always local, so never an outbound destination."""
        raise httpcore.ConnectError("unix sockets are not outbound destinations")

    async def sleep(self, seconds: float) -> None:
        """Sleep on the wrapped backend (used by httpcore between connect retries)."""
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request's URL shape and scheme, then sends it over the guarded pool."""

    def __init__(self, policy: OutboundPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self._policy = policy
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse URLs the policy forbids (e.g. plain http) before any connection is made."""
        parse_url(request.url, self._policy)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._inner.aclose()


class GuardedClient(httpx.AsyncClient):
    """An httpx client that carries the policy it was built with, for the size limits."""

    def __init__(self, policy: OutboundPolicy, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(
            transport=transport,
            timeout=httpx.Timeout(policy.timeout, connect=policy.connect_timeout),
            follow_redirects=False,
            # Env proxies would dial the proxy instead of the destination, skipping the checks.
            trust_env=False,
            # Compressed bodies could inflate far past max_response_bytes within one chunk.
            headers={"Accept-Encoding": "identity"},
        )
        self.policy = policy


def build_client(
    policy: OutboundPolicy,
    *,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """Build the guarded client: checked connects, policy timeouts, no redirects, no env proxies."""
    limits = httpx.Limits(
        max_connections=policy.max_connections,
        max_keepalive_connections=policy.max_keepalive_connections,
    )
    ctx = ssl_context if ssl_context is not None else httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ctx, limits=limits, trust_env=False)
    # httpx 0.28's AsyncHTTPTransport takes no network backend, so its pool is replaced by one
    # built with the same settings plus ours (the fields mirror AsyncHTTPTransport.__init__).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ctx,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedNetworkBackend(policy, resolver=resolver),
    )
    return GuardedClient(policy, GuardedTransport(policy, transport))
