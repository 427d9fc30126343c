"""Console sign-in: admin keys, sessions in Redis, CSRF tokens, and the wrong-key rate limit.

A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure over https), scoped to
/console. Redis keeps a record under the id's SHA-256 (a copy of Redis holds nothing a browser
could present) with the CSRF token and an expiry; the key itself is never stored or sent back.
Every POST carries the session's CSRF token in a hidden field, compared in constant time; the
sign-in form, which has no session yet, carries a token that must match a short-lived cookie
(double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Form, Request, Response
from redis.asyncio import Redis

from core.settings import Settings
from gateway.auth import match_key
from gateway.console.web import PREFIX, ConsoleError, SignInRequired
from tasks.store import now_iso

COOKIE = "gw_console"
SIGNIN_COOKIE = "gw_console_signin"
SIGNIN_TOKEN_SECONDS = 3600
WINDOW_SECONDS = 60
_REFUND = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end"


@dataclass(frozen=True)
class Session:
    """A signed-in operator: which key (by hash prefix), since when, and the form token."""

    key: str  # the Redis key of the record
    csrf: str
    owner: str
    created_at: str


def admin_key_valid(request: Request, key: str) -> str | None:
    """The owner id (hash prefix) of ``key`` if it is an admin key; None otherwise.

    The one place the console decides who is an admin: API_KEYS alone (submit-only) is not.
    """
    return match_key(key, request.app.state.admin_key_hashes)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _redis(request: Request) -> Redis:
    client: Redis = request.app.state.redis
    return client


def _key(request: Request, *parts: str) -> str:
    return _settings(request).redis_key_prefix + ":".join(("console", *parts))


def _session_key(request: Request, session_id: str) -> str:
    return _key(request, "session", hashlib.sha256(session_id.encode()).hexdigest())


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _forget(request: Request, response: Response, name: str) -> None:
    secure = request.url.scheme == "https"
    response.delete_cookie(name, path=PREFIX, secure=secure, httponly=True, samesite="strict")


async def open_session(request: Request, response: Response, owner: str) -> None:
    """Record a new session for ``owner`` and set its cookie on ``response``."""
    session_id = new_token()
    ttl = _settings(request).console_session_seconds
    record = {"csrf": new_token(), "owner": owner, "created_at": now_iso()}
    await _redis(request).set(_session_key(request, session_id), json.dumps(record), ex=ttl)
    _cookie(request, response, COOKIE, session_id, ttl)
    _forget(request, response, SIGNIN_COOKIE)


async def current_session(request: Request) -> Session | None:
    """The session the request's cookie names, if it exists, has not expired, and its key is
    still an admin key."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    key = _session_key(request, session_id)
    raw = await _redis(request).get(key)
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    hashes: tuple[str, ...] = request.app.state.admin_key_hashes
    if not any(known[:16] == record["owner"] for known in hashes):
        return None  # its key was taken out of ADMIN_API_KEYS since: the session ends with it
    session = Session(key, record["csrf"], record["owner"], record["created_at"])
    request.state.console_session = session
    return session


async def close_session(request: Request, response: Response, session: Session) -> None:
    """Forget ``session`` in Redis and clear its cookie."""
    await _redis(request).delete(session.key)
    _forget(request, response, COOKIE)


async def require_session(request: Request) -> Session:
    """The signed-in session; otherwise the page redirects to sign-in."""
    session = await current_session(request)
    if session is None:
        raise SignInRequired
    return session


def _same(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


async def require_csrf(
    session: Annotated[Session, Depends(require_session)],
    csrf_token: Annotated[str, Form()] = "",
) -> Session:
    """The session of a POST whose form carries the session's CSRF token (403 otherwise)."""
    if not _same(csrf_token, session.csrf):
        raise ConsoleError(403, "This form has expired or did not come from the console; reload.")
    return session


def new_token() -> str:
    """A random token (session ids, CSRF tokens, the sign-in form's token)."""
    return secrets.token_urlsafe(32)


def set_signin_cookie(request: Request, response: Response, token: str) -> None:
    """The sign-in form's token as the cookie its POST must match."""
    _cookie(request, response, SIGNIN_COOKIE, token, SIGNIN_TOKEN_SECONDS)


def signin_token_valid(request: Request, token: str) -> bool:
    """Whether the sign-in form's token matches its cookie."""
    return _same(token, request.cookies.get(SIGNIN_COOKIE, ""))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def take_signin_attempt(request: Request) -> int:
    """Count a sign-in attempt against this client address's minute; the seconds to wait when
    it is over the limit (0: go on). Counted before the key is checked, in one transaction, so
    parallel guesses cannot all pass a check made before any of them was counted."""
    key = _key(request, "signin-attempts", _client(request))
    async with _redis(request).pipeline(transaction=True) as pipe:
        # SET NX EX starts the window with its expiry (Redis 6.2 has no EXPIRE NX); INCR keeps it
        pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, count, ttl = await pipe.execute()
    if int(count) > _settings(request).console_signin_failures_per_minute:
        return max(1, int(ttl))
    return 0


async def refund_signin_attempt(request: Request) -> None:
    """A right key does not count against the limit: only wrong ones do."""
    key = _key(request, "signin-attempts", _client(request))
    # only within the window: a DECR after it lapsed would leave a key with no expiry
    await _redis(request).eval(_REFUND, 1, key)


SessionDep = Annotated[Session, Depends(require_session)]
CsrfDep = Annotated[Session, Depends(require_csrf)]
