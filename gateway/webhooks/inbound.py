"""The dependency that turns a request into a verified webhook, or answers 404/415/413/401.

Checks, cheapest first: the source exists (404), its content type is accepted (415), the body is
within MAX_WEBHOOK_BODY_BYTES by Content-Length and as streamed (413, without reading the rest),
the signature verifies over the raw bytes exactly as received (401 with the failing check's code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from core.settings import Settings
from gateway.body import read_limited
from gateway.errors import ApiError
from gateway.metrics import count_webhook
from gateway.webhooks.signatures import Verified
from gateway.webhooks.verifiers import InboundSource
from handlers.webhooks import media_type


@dataclass(frozen=True)
class InboundWebhook:
    """A request whose signature verified: its source, media type, raw body and what it told us."""

    source: InboundSource
    media: str
    body: bytes
    verified: Verified


async def verified_webhook(source: str, request: Request) -> InboundWebhook:
    """The verified webhook for ``POST /v1/webhooks/{source}``."""
    sources: Mapping[str, InboundSource] = request.app.state.webhook_sources
    loaded = sources.get(source)
    if loaded is None:
        raise ApiError("unknown_source", f"no webhook source {source!r}")
    media = media_type(request.headers.get("content-type"))
    if not loaded.config.accepts(media):
        accepted = "application/json" + (
            " or application/x-www-form-urlencoded" if loaded.config.scheme == "github" else ""
        )
        raise ApiError("unsupported_media_type", f"send the event as {accepted}")
    settings: Settings = request.app.state.settings
    body = await read_limited(request, settings.max_webhook_body_bytes)
    verified = loaded.verify(request.headers, body)  # or SignatureError, an ApiError: 401
    return InboundWebhook(loaded, media, body, verified)


async def counted_webhook(source: str, request: Request) -> InboundWebhook:
    """``verified_webhook``, its refusals counted in gateway_webhooks_received_total."""
    try:
        return await verified_webhook(source, request)
    except ApiError as exc:
        count_webhook(request, source, exc.code)
        raise


VerifiedWebhook = Annotated[InboundWebhook, Depends(counted_webhook)]
