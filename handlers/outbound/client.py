"""The guarded httpx client: every connection dials an address checked at connect time."""

from __future__ import annotations

import socket
import ssl

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from handlers.outbound.aiohttp_transport import AiohttpTransport
from handlers.outbound.policy import (
    OutboundPolicy,
    Resolver,
    UrlRejected,
    parse_url,
    resolve_checked,
)

# httpx's default keep-alive expiry, which this client had over httpcore: receivers are arbitrary
# servers, and many close idle connections after about 5 s (Node's default), so a longer expiry
# would mostly reuse connections the other side has already dropped.
KEEPALIVE_EXPIRY = 5.0


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for the guarded pool: only addresses the policy allows are returned.

    Checking the name at submit time is not enough: DNS may answer differently when the worker
    connects (rebinding). aiohttp dials exactly the addresses a resolver returns, so returning
    only checked ones closes that window. TLS is not affected: aiohttp takes SNI and the name the
    certificate is checked against from the URL's host, never from the resolved address
    (``TCPConnector._create_direct_connection``). aiohttp skips the resolver for IP literals;
    AiohttpTransport asks it for those itself, so literals are checked here too.

    aiohttp caches answers (``ttl_dns_cache``, 10 s by default) and shares one lookup between
    concurrent connects to a host. Both are safe: an answer is cached only after it passed the
    check, and a refused name raises, so nothing is cached for it.
    """

    def __init__(self, policy: OutboundPolicy, resolver: Resolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve and check ``host``: every answer allowed, or UrlRejected / OSError."""
        try:
            # A blocked answer raises UrlRejected, which aiohttp and httpx pass through unmapped.
            addresses = await resolve_checked(host, port, self._policy, self._resolver)
        except UrlRejected as exc:
            if exc.code != "url_unresolvable":
                raise
            # The name passed at submit time; failing now is more likely a DNS outage than a
            # bad URL, so it becomes a connect error (aiohttp maps OSError) and is retried.
            raise OSError(exc.detail) from None
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for ip in addresses
        ]

    async def close(self) -> None:
        """Nothing to release: lookups go through the event loop or the injected resolver."""


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
    """Build the guarded client: checked connects, policy timeouts, no redirects, no env proxies.

    Call it inside a coroutine on the loop that will use the client: aiohttp binds its pool there.
    """
    transport = AiohttpTransport(
        # 0 is aiohttp's "no limit", what the policy's None means
        max_connections=policy.max_connections or 0,
        keepalive_expiry=KEEPALIVE_EXPIRY,
        resolver=GuardedResolver(policy, resolver),
        # httpx's context (certifi's roots), the trust store this client has always used
        ssl_context=ssl_context if ssl_context is not None else httpx.create_ssl_context(),
    )
    return GuardedClient(policy, GuardedTransport(policy, transport))
