"""The one guarded outbound HTTP client (DESIGN promise 4) that every request goes through.

policy.py             OutboundPolicy, the address classifier, check_url (submit time)
client.py             build_client: a resolver that returns only checked addresses (connect time)
aiohttp_transport.py  httpx's API over aiohttp's pool; IP literals go through the resolver too
transfer.py           request_limited / post_limited / fetch_to_file: bounded reads, errors mapped

The package itself exports the policy half only: the API checks URLs at submit time and must not
load aiohttp. Workers import the client, transport and transfers from their modules.
"""

from handlers.outbound.policy import (
    OutboundPolicy,
    Resolver,
    UrlRejected,
    blocked_reason,
    check_url,
    redact_url,
    system_resolver,
)

__all__ = [
    "OutboundPolicy",
    "Resolver",
    "UrlRejected",
    "blocked_reason",
    "check_url",
    "redact_url",
    "system_resolver",
]
