"""Requests through the guarded client with bounded reads, and httpx failures mapped to the tree."""

from __future__ import annotations

import contextlib
import email.utils
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx

from handlers.errors import HandlerError, PermanentError, TransientError
from handlers.outbound.client import GuardedClient
from handlers.outbound.policy import MIB, UrlRejected, redact_url

_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """A response read up to the size limit; ``truncated`` says the body was cut there."""

    status_code: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    elapsed: float

    def raise_for_status(self, what: str) -> None:
        """Raise the tree's error for a non-2xx status (see ``error_for_status``)."""
        error = error_for_status(self.status_code, self.headers, what)
        if error is not None:
            raise error


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_for_status(status: int, headers: httpx.Headers, what: str) -> HandlerError | None:
    """The error a status means: 408/429/5xx transient, 3xx and other 4xx permanent, 2xx None."""
    if 200 <= status < 300:
        return None
    detail = f"{what} answered HTTP {status}"
    if status in (408, 429) or status >= 500:
        retry_after = retry_after_seconds(headers.get("retry-after"))
        return TransientError(detail, code="http_status", retry_after=retry_after)
    if 300 <= status < 400:
        # Redirects are never followed: the target could be anywhere, including inside.
        return PermanentError(f"{detail} (redirects are not followed)", code="http_redirect")
    return PermanentError(detail, code="http_status")


@contextlib.contextmanager
def _mapped_errors(method: str, url: str) -> Iterator[None]:
    what = f"{method} {redact_url(url)}"
    try:
        yield
    except httpx.TimeoutException:
        raise TransientError(f"{what} timed out", code="timeout") from None
    except httpx.UnsupportedProtocol:
        raise UrlRejected("url_scheme_not_allowed", f"{what}: scheme not supported") from None
    except httpx.InvalidURL:
        raise UrlRejected("url_invalid", f"{what}: invalid URL") from None
    except httpx.TransportError as exc:
        # str(exc) comes from the socket or TLS layer and carries no URL or secret.
        raise TransientError(f"{what} failed: {exc}", code="connection_error") from None


@contextlib.asynccontextmanager
async def _stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    content: bytes | None,
    headers: dict[str, str] | None,
) -> AsyncIterator[httpx.Response]:
    # Read errors in the caller's body are mapped here too: they are thrown in at the yield.
    with _mapped_errors(method, url):
        async with client.stream(method, url, content=content, headers=headers) as response:
            yield response


def _limit_of(client: httpx.AsyncClient, max_bytes: int | None) -> int:
    if max_bytes is not None:
        return max_bytes
    return client.policy.max_response_bytes if isinstance(client, GuardedClient) else MIB


async def request_limited(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    max_bytes: int | None = None,
) -> OutboundResponse:
    """Send a request and read at most ``max_bytes`` of the body (default: the client's policy)."""
    limit = _limit_of(client, max_bytes)
    started = time.monotonic()
    async with _stream(client, method, url, content, headers) as response:
        chunks: list[bytes] = []
        size = 0
        truncated = False
        async for chunk in response.aiter_bytes(_CHUNK):
            if size + len(chunk) > limit:
                chunks.append(chunk[: limit - size])
                # Leaving the stream unread closes the connection instead of draining it.
                truncated = True
                break
            chunks.append(chunk)
            size += len(chunk)
    return OutboundResponse(
        status_code=response.status_code,
        headers=response.headers,
        body=b"".join(chunks),
        truncated=truncated,
        elapsed=time.monotonic() - started,
    )


async def post_limited(
    client: httpx.AsyncClient, url: str, *, content: bytes, headers: dict[str, str]
) -> OutboundResponse:
    """POST ``content`` and read the response up to the client's size limit."""
    return await request_limited(client, "POST", url, content=content, headers=headers)


async def fetch_to_file(
    client: httpx.AsyncClient,
    url: str,
    dest_path: str | Path,
    *,
    max_bytes: int,
    chunk_cb: Callable[[int], None] | None = None,
) -> int:
    """Stream a GET to a file, all or nothing; return its size. ``chunk_cb`` gets bytes so far."""
    dest = Path(dest_path)
    what = f"GET {redact_url(url)}"
    # Written beside the destination and renamed at the end, so no reader sees a partial file.
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        async with _stream(client, "GET", url, None, None) as response:
            error = error_for_status(response.status_code, response.headers, what)
            if error is not None:
                raise error
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise PermanentError(
                    f"{what} is {declared} bytes, over {max_bytes}", code="too_large"
                )
            size = 0
            async with await anyio.open_file(part, "wb") as out:
                async for chunk in response.aiter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PermanentError(f"{what} is over {max_bytes} bytes", code="too_large")
                    await out.write(chunk)
                    if chunk_cb is not None:
                        chunk_cb(size)
        await anyio.Path(part).replace(dest)
        return size
    finally:
        await anyio.Path(part).unlink(missing_ok=True)
