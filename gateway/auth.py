"""API keys for internal endpoints: only SHA-256 hashes are kept, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from gateway.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def match_key(key: str, key_hashes: tuple[str, ...]) -> str | None:
    """The owner id (a prefix of its hash) of ``key`` if its hash is among ``key_hashes``.

    Compared against every hash, so the time taken says nothing about which one matched.
    """
    presented = hashlib.sha256(key.strip().encode()).hexdigest()
    match = ""
    for known in key_hashes:
        if hmac.compare_digest(presented, known):
            match = known
    return match[:16] if key.strip() and match else None


def authenticate(authorization: str | None, key_hashes: tuple[str, ...]) -> str:
    """The caller's owner id (a prefix of its key's hash) for a valid Bearer header; else 401."""
    if not authorization:
        raise ApiError(
            "missing_api_key", "send Authorization: Bearer <api key>", headers=_CHALLENGE
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            "malformed_api_key", "use Authorization: Bearer <api key>", headers=_CHALLENGE
        )
    owner = match_key(key, key_hashes)
    if owner is None:
        raise ApiError("invalid_api_key", "the API key is not valid", headers=_CHALLENGE)
    return owner


def authenticate_admin(
    authorization: str | None, key_hashes: tuple[str, ...], admin_hashes: tuple[str, ...]
) -> str:
    """The owner id of a valid admin key; 401 for no valid key, 403 for a plain API key."""
    owner = authenticate(authorization, key_hashes)
    # the key is known to be valid: this second pass only tells admin from plain
    _, _, key = (authorization or "").partition(" ")
    if match_key(key, admin_hashes) is None:
        raise ApiError("admin_required", "this needs an admin API key (ADMIN_API_KEYS)")
    return owner
