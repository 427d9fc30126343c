"""One signed delivery attempt of an outbound message (a callback or a forwarded webhook event).

Signed with Standard Webhooks headers: ``webhook-id`` (the delivery's id, the same on every
attempt), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64>`` per signing key,
space-separated, so receivers keep verifying through a key rotation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx

from handlers.errors import PermanentError, TransientError
from handlers.outbound.transfer import post_limited, retry_after_seconds
from handlers.signing import sign_standard

Verdict = Literal["delivered", "retry", "stop"]
EXCERPT = 300


@dataclass(frozen=True)
class Attempt:
    """What one attempt did: the verdict, and what to record about it."""

    verdict: Verdict
    status_code: int | None
    latency_ms: float
    error: str | None = None
    retry_after: float | None = None


def signed_headers(
    keys: Sequence[bytes], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(sign_standard(key, msg_id, ts, body) for key in keys)
    return {
        "content-type": "application/json",
        "user-agent": "webhook-gateway",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signatures,
    }


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    msg_id: str,
    body: bytes,
    keys: Sequence[bytes],
    extra_headers: Mapping[str, str] | None = None,
) -> Attempt:
    """POST ``body`` to ``url`` once: 2xx delivered; 410 or a refused address stop; else retry.

    ``extra_headers`` (an endpoint's own) go first: the signature headers always win.
    """
    started = time.perf_counter()
    headers = signed_headers(keys, msg_id, body)
    if extra_headers:
        headers = {**{k.lower(): v for k, v in extra_headers.items()}, **headers}
    try:
        response = await post_limited(client, url, content=body, headers=headers)
    except TransientError as exc:
        return Attempt("retry", None, _ms(started), exc.detail[:EXCERPT], exc.retry_after)
    except PermanentError as exc:  # a refused address or URL: retrying cannot help
        return Attempt("stop", None, _ms(started), f"{exc.code}: {exc.detail}"[:EXCERPT])
    latency = _ms(started)
    status = response.status_code
    if 200 <= status < 300:
        return Attempt("delivered", status, latency)
    excerpt = response.body[:EXCERPT].decode("utf-8", errors="replace") or f"HTTP {status}"
    if status == 410:  # the receiver says the endpoint is gone for good
        return Attempt("stop", status, latency, excerpt)
    retry_after = None
    if status in (429, 503):
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
    return Attempt("retry", status, latency, excerpt, retry_after)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
