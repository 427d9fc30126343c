"""HMAC signing primitives, shared by inbound verification and our outbound callbacks.

Everything here works on raw bytes: a signature is only meaningful over the exact bytes sent,
so nothing re-serialises or re-decodes a body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Literal

Algorithm = Literal["sha256", "sha512"]

WHSEC_PREFIX = "whsec_"

# Looked up by name, not passed through to hashlib, so a config typo cannot select md5 or sha1.
_DIGESTS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def standard_webhooks_key(secret: str) -> bytes:
    """Decode a Standard Webhooks secret (`whsec_<base64>`, prefix optional) into its HMAC key."""
    encoded = secret.removeprefix(WHSEC_PREFIX).strip()
    # Some senders hand out unpadded base64; the reference library pads the same way.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        # The message must not quote the secret: it may end up in a log or a 500 page.
        raise ValueError("Standard Webhooks secret is not valid base64") from None
    if not key:
        raise ValueError("Standard Webhooks secret is empty")
    return key


def hmac_digest(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> bytes:
    """Return the raw HMAC of `message` under `key` with the named hash."""
    try:
        digestmod = _DIGESTS[algorithm]
    except KeyError:
        raise ValueError(f"unsupported HMAC algorithm: {algorithm!r}") from None
    return hmac.new(key, message, digestmod).digest()


def hmac_hex(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> str:
    """Return the lower-case hex HMAC of `message` under `key`."""
    return hmac_digest(key, message, algorithm).hex()


def hmac_base64(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> str:
    """Return the standard-alphabet base64 HMAC of `message` under `key`."""
    return base64.b64encode(hmac_digest(key, message, algorithm)).decode("ascii")


def standard_signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    """Return the bytes Standard Webhooks signs: `{id}.{timestamp}.{body}`."""
    # Prefix encoded as UTF-8 to match the reference library; the body is appended untouched.
    return f"{msg_id}.{timestamp}.".encode() + body


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one Standard Webhooks `webhook-signature` entry: `v1,<base64 HMAC-SHA256>`."""
    return "v1," + hmac_base64(key, standard_signed_content(msg_id, timestamp, body))


def sign_github(secret: str, body: bytes) -> str:
    """Return a GitHub `X-Hub-Signature-256` value: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac_hex(secret.encode(), body)


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """Return a `Stripe-Signature` value: `t=<ts>,v1=<hex>`, keyed with the whole secret string."""
    # Stripe keys with the literal secret, `whsec_` included; it is not base64-decoded.
    return f"t={timestamp},v1=" + hmac_hex(secret.encode(), f"{timestamp}.".encode() + body)
