"""Inbound webhook signature verification over the raw body, one function per published scheme.

Checks run in a fixed order so a sender learns the first thing wrong with its request:
missing header -> malformed header -> timestamp tolerance -> signature.
Every candidate signature is compared with every secret in constant time, without stopping at
the first match, so timing reveals neither which secret matched nor how many were tried.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hmac import compare_digest
from typing import Literal

from gateway.errors import ApiError
from handlers.signing import Algorithm, hmac_digest, standard_signed_content, standard_webhooks_key

ErrorCode = Literal[
    "webhook_missing_header",
    "webhook_malformed_header",
    "webhook_bad_signature",
    "webhook_timestamp_out_of_tolerance",
]

_INTEGER = re.compile(r"[0-9]{1,15}")  # bounded: a timestamp never needs more digits
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class SignatureError(ApiError):
    """A webhook failed verification (401); `detail` names the check and header, never a secret."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(code, detail)


@dataclass(frozen=True)
class Verified:
    """What a verified webhook tells us: the sender's delivery id (for dedup) and its timestamp."""

    delivery_id: str | None
    timestamp: int | None


def _malformed(detail: str) -> SignatureError:
    return SignatureError("webhook_malformed_header", detail)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Look a header up case-insensitively, treating an empty value as absent."""
    value = headers.get(name)
    if value is None:
        # Starlette's Headers is case-insensitive already; a plain dict may not be lower-cased.
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return (value or "").strip() or None


def _require(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise SignatureError("webhook_missing_header", f"missing {name} header")
    return value


def _parse_timestamp(value: str, name: str) -> int:
    if not _INTEGER.fullmatch(value):
        raise _malformed(f"{name} is not an integer timestamp")
    return int(value)


def _check_tolerance(timestamp: int, tolerance: int, now: float | None, name: str) -> None:
    # Both directions: a stale timestamp is a replay, a future one would stay replayable for longer.
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(
            "webhook_timestamp_out_of_tolerance",
            f"{name} is more than {tolerance} seconds from the current time",
        )


def _decode_hex(value: str, name: str) -> bytes:
    if not _HEX.fullmatch(value):
        raise _malformed(f"{name} signature is not hex")
    return bytes.fromhex(value)


def _decode_base64(value: str, name: str) -> bytes:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise _malformed(f"{name} signature is not base64")
    return decoded


def _check_signatures(
    candidates: Sequence[bytes],
    keys: Iterable[bytes],
    message: bytes,
    name: str,
    algorithm: Algorithm = "sha256",
) -> None:
    matched = False
    for key in keys:
        expected = hmac_digest(key, message, algorithm)
        for candidate in candidates:
            # No early exit: see the module docstring.
            matched |= compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("webhook_bad_signature", f"no signature in {name} matches the body")


def _configured(secrets: Sequence[str]) -> Sequence[str]:
    # A missing secret is our misconfiguration, not the sender's fault: fail loudly, not with a 401.
    if not secrets or not all(secrets):
        raise ValueError("no webhook secret configured (or an empty one)")
    return secrets


def verify_standard(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> Verified:
    """Verify a Standard Webhooks delivery: `webhook-id`, `-timestamp` and `-signature` headers."""
    keys = [standard_webhooks_key(secret) for secret in _configured(secrets)]
    msg_id = _require(headers, "webhook-id")
    raw_timestamp = _require(headers, "webhook-timestamp")
    raw_signatures = _require(headers, "webhook-signature")
    timestamp = _parse_timestamp(raw_timestamp, "webhook-timestamp")
    candidates: list[bytes] = []
    for entry in raw_signatures.split():
        version, comma, signature = entry.partition(",")
        if not comma:
            raise _malformed("webhook-signature entry lacks a version")
        if version == "v1":  # other versions (e.g. v1a, asymmetric) are not ours to check
            candidates.append(_decode_base64(signature, "webhook-signature"))
    if not candidates:
        raise _malformed("webhook-signature has no v1 signature")
    _check_tolerance(timestamp, tolerance, now, "webhook-timestamp")
    message = standard_signed_content(msg_id, timestamp, body)
    _check_signatures(candidates, keys, message, "webhook-signature")
    return Verified(delivery_id=msg_id, timestamp=timestamp)


def verify_github(headers: Mapping[str, str], body: bytes, secrets: Sequence[str]) -> Verified:
    """Verify a GitHub delivery by `X-Hub-Signature-256: sha256=<hex>` over the body."""
    keys = [secret.encode() for secret in _configured(secrets)]
    name = "x-hub-signature-256"
    value = _require(headers, name)
    scheme, equals, signature = value.partition("=")
    if not equals or scheme != "sha256":
        raise _malformed(f"{name} does not start with sha256=")
    candidate = _decode_hex(signature, name)
    _check_signatures([candidate], keys, body, name)
    # GitHub has no signed timestamp; X-GitHub-Delivery (unsigned) is still its dedup key.
    return Verified(delivery_id=_header(headers, "x-github-delivery"), timestamp=None)


def verify_stripe(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> Verified:
    """Verify a Stripe delivery by `Stripe-Signature: t=<ts>,v1=<hex>...` over `{t}.{body}`."""
    keys = [secret.encode() for secret in _configured(secrets)]
    name = "stripe-signature"
    value = _require(headers, name)
    timestamps: list[str] = []
    candidates: list[bytes] = []
    for item in value.split(","):
        key, equals, item_value = item.strip().partition("=")
        if not equals:
            raise _malformed(f"{name} item is not key=value")
        if key == "t":
            timestamps.append(item_value)
        elif key == "v1":  # v0 and any future schemes are ignored, as Stripe's libraries do
            candidates.append(_decode_hex(item_value, name))
    if len(timestamps) != 1:
        raise _malformed(f"{name} needs exactly one t= timestamp")
    timestamp = _parse_timestamp(timestamps[0], name)
    if not candidates:
        raise _malformed(f"{name} has no v1 signature")
    _check_tolerance(timestamp, tolerance, now, name)
    # Stripe keys with the whole secret string, `whsec_` included, not base64-decoded.
    message = f"{timestamp}.".encode() + body
    _check_signatures(candidates, keys, message, name)
    return Verified(delivery_id=_stripe_event_id(body), timestamp=timestamp)


def _stripe_event_id(body: bytes) -> str | None:
    # The body is authentic here; if it is still not a JSON event, we accept it without a dedup id
    # rather than reject a signed delivery: the event route decides what to do with its content.
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def verify_hmac(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    header: str,
    algorithm: Algorithm = "sha256",
    encoding: Literal["hex", "base64"] = "hex",
    prefix: str = "",
    timestamp_header: str | None = None,
    tolerance: int | None = None,
    id_header: str | None = None,
    now: float | None = None,
) -> Verified:
    """Verify a generic HMAC of the body (or `{timestamp}.{body}`) in a configured header."""
    keys = [secret.encode() for secret in _configured(secrets)]
    if tolerance is not None and timestamp_header is None:
        # A tolerance without a signed timestamp would promise replay protection it cannot give.
        raise ValueError("tolerance needs a timestamp_header")
    name = header.lower()
    ts_name = timestamp_header.lower() if timestamp_header else None
    value = _require(headers, name)
    raw_timestamp = _require(headers, ts_name) if ts_name else None
    if not value.startswith(prefix):
        raise _malformed(f"{name} does not start with {prefix!r}")
    decode = _decode_hex if encoding == "hex" else _decode_base64
    candidate = decode(value[len(prefix) :], name)
    timestamp = None
    message = body
    if ts_name is not None and raw_timestamp is not None:
        timestamp = _parse_timestamp(raw_timestamp, ts_name)
        _check_tolerance(timestamp, 300 if tolerance is None else tolerance, now, ts_name)
        message = f"{timestamp}.".encode() + body
    _check_signatures([candidate], keys, message, name, algorithm)
    delivery_id = _header(headers, id_header.lower()) if id_header else None
    return Verified(delivery_id=delivery_id, timestamp=timestamp)
