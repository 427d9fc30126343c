"""httpx's client API over aiohttp's connection pool, for 1000+ calls in flight in one process.

httpcore's pool walks every connection for every request it queues or releases, so its cost per
request grows with the number of open connections: on this project's 2-core bench, 1000
concurrent calls through one httpx.AsyncClient completed ~110 calls/s against a 2 s stub, where
the same calls through aiohttp's pool completed ~460/s (bench/README.md). Callers keep speaking
httpx (and keep their respx tests); only the pool underneath changes. aiohttp errors are mapped to
httpx's, so a caller's ``except httpx.TimeoutException`` / ``httpx.TransportError`` still holds.
Both the LLM client and the guarded outbound client (client.py) send through it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver
from aiohttp.helpers import is_ip_address
from yarl import URL

_READ_CHUNK = 64 * 1024


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    # Most specific first: aiohttp's timeouts subclass both TimeoutError and ClientError.
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.NetworkError(str(exc), request=request) from exc


class _ResponseBody(httpx.AsyncByteStream):
    """The aiohttp response body as httpx reads it; closing it returns the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(_READ_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        # A body left unread closes the connection rather than draining it into the pool.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends over one aiohttp session (HTTP/1.1, keep-alive pool).

    Build it inside a coroutine on the loop that will use it: aiohttp binds its session there.
    Redirects are not followed, bodies are not decompressed and cookies are not kept here; httpx
    does each (or not) as it would over its own transport.

    ``resolver`` is asked for every host, IP literals included: aiohttp dials a literal without
    asking its resolver, so this transport asks it first (and dials the literal as written). A
    resolver that refuses addresses therefore sees every destination. ``max_connections=0`` is
    aiohttp's "no limit".
    """

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 30.0,
        resolver: AbstractResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=keepalive_expiry,
            resolver=resolver,
            ssl=ssl_context if ssl_context is not None else True,
        )
        self._resolver = resolver
        # trust_env off: a proxy from the environment would be dialled instead of the
        # destination, past any resolver's checks; a proxy belongs in the URL's own network.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,
            timeout=_NO_TIMEOUT,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return as soon as the status and headers are in."""
        # encoded=True: the URL is sent exactly as httpx built and percent-encoded it.
        url = URL(str(request.url), encoded=True)
        if self._resolver is not None and url.raw_host and is_ip_address(url.raw_host):
            await _ask_resolver(self._resolver, url.raw_host, url.port or 0, request)
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        with _mapped(request):
            response = await self._session.request(
                request.method,
                url,
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                # httpx already set every header it wants; aiohttp must not add its own
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self._session.close()


async def _ask_resolver(
    resolver: AbstractResolver, host: str, port: int, request: httpx.Request
) -> None:
    # Called for exactly the hosts aiohttp will not resolve (is_ip_address is its own test for
    # that). The answer is not needed, a literal is its own address: what matters is that the
    # resolver may refuse it.
    try:
        await resolver.resolve(host, port)
    except OSError as exc:
        # aiohttp turns a resolver's OSError into a connect error; so does this.
        raise httpx.ConnectError(str(exc), request=request) from exc


_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)
