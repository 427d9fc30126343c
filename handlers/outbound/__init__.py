"""The one guarded outbound HTTP client (DESIGN promise 4) that every request goes through.

policy.py             OutboundPolicy, the address classifier, check_url (submit time)
client.py             build_client: a resolver that returns only checked addresses (connect time)
aiohttp_transport.py  httpx's API over aiohttp's pool; IP literals go through the resolver too
transfer.py           request_limited / post_limited / fetch_to_file: bounded reads, errors mapped
"""

from handlers.outbound.aiohttp_transport import AiohttpTransport
from handlers.outbound.client import GuardedClient, GuardedResolver, build_client
from handlers.outbound.policy import (
    OutboundPolicy,
    Resolver,
    UrlRejected,
    blocked_reason,
    check_url,
    redact_url,
    system_resolver,
)
from handlers.outbound.transfer import (
    OutboundResponse,
    error_for_status,
    fetch_to_file,
    post_limited,
    request_limited,
    retry_after_seconds,
)

__all__ = [
    "AiohttpTransport",
    "GuardedClient",
    "GuardedResolver",
    "OutboundPolicy",
    "OutboundResponse",
    "Resolver",
    "UrlRejected",
    "blocked_reason",
    "build_client",
    "check_url",
    "error_for_status",
    "fetch_to_file",
    "post_limited",
    "redact_url",
    "request_limited",
    "retry_after_seconds",
    "system_resolver",
]
