"""The copy of a webhook's request headers its event keeps, for the console: secrets never stored.

Masked before the record is written (so no credential is at rest in Redis): every signature
header of the published schemes and the source's own HMAC header, anything that carries a
credential by its name (authorization, cookies, API keys, tokens, secrets, signatures), and
wherever one of the source's secrets appears in a value (core/logs.py's Scrubber, which also
drops URLs' user info and query strings). Cheap enough for the hot path: one pass over a few
headers (bench/README.md has the measurement); the head is bounded by MAX_HEADER_BYTES already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from core.logs import MASK, Scrubber

# by name, whatever the value: what the schemes sign with, and what carries a credential
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "webhook-signature",
        "x-hub-signature",
        "x-hub-signature-256",
        "stripe-signature",
    }
)
SECRET_WORDS = ("signature", "secret", "token", "auth", "cookie", "api-key", "apikey", "password")


@lru_cache(maxsize=1024)  # the same few names on every request; bounded against odd senders
def secret_name(name: str, signature_header: str = "") -> bool:
    """Whether header ``name`` (lower case) carries a credential by its name alone."""
    return (
        name in SECRET_HEADERS
        or name == signature_header
        or any(word in name for word in SECRET_WORDS)
    )


@lru_cache(maxsize=256)
def _scrubber(secrets: tuple[str, ...]) -> Scrubber:
    return Scrubber(secrets)


def kept_headers(
    headers: Iterable[tuple[str, str]], secrets: tuple[str, ...], signature_header: str | None
) -> dict[str, str]:
    """``headers`` (name, value pairs) with credentials masked; a repeated header is joined
    with ', ' as HTTP allows."""
    scrub = _scrubber(secrets)
    own = signature_header.lower() if signature_header else ""
    kept: dict[str, str] = {}
    for raw_name, value in headers:
        name = raw_name.lower()
        shown = MASK if secret_name(name, own) else scrub(value)
        kept[name] = f"{kept[name]}, {shown}" if name in kept else shown
    return kept


def masked(headers: Mapping[str, str], secrets: Sequence[str]) -> dict[str, str]:
    """Headers as kept, masked again as shown (secrets configured since the event arrived)."""
    scrub = _scrubber(tuple(secrets))
    return {
        name: MASK if secret_name(name) else scrub(str(value)) for name, value in headers.items()
    }
