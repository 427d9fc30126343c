"""How every console response is made: templates, security headers, errors as pages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import jinja2
import redis
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from gateway.errors import ApiError

PREFIX = "/console"
SIGN_IN = f"{PREFIX}/sign-in"

# No 'unsafe-inline' anywhere: an injected <script> or on*= attribute does not run even if it
# got past escaping. connect-src falls back to default-src, which covers the EventSource stream.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

_PACKAGE = files("gateway.console")
STATIC: dict[str, tuple[bytes, str]] = {
    name: ((_PACKAGE / "static" / name).read_bytes(), media_type)
    for name, media_type in (
        ("console.js", "text/javascript; charset=utf-8"),
        ("overview_chart.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("jobs.js", "text/javascript; charset=utf-8"),
        ("job.js", "text/javascript; charset=utf-8"),
    )
}
# cache-busting query: a new release's files are fetched again, an unchanged one comes from cache
STATIC_VERSION = {name: hashlib.sha256(body).hexdigest()[:12] for name, (body, _) in STATIC.items()}


class SignInRequired(Exception):
    """No valid session: answered with a redirect to the sign-in page."""


class ConsoleError(Exception):
    """A request the console refuses, shown as a page with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def pretty(value: Any) -> str:
    """A JSON value as indented text; autoescape escapes it like any other string."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def form_time(text: str, name: str) -> float | None:
    """Epoch seconds of a form's time (ISO 8601, as a datetime-local input sends it; no zone
    given means UTC), None when empty; a 400 page naming field ``name`` otherwise."""
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConsoleError(400, f"{name} is not a time (2026-01-31T12:00).") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def seconds(value: float | None) -> str:
    """An age for people: '4.2 s', '3 min 04 s', '2 h 05 min', or 'unknown'."""
    if value is None:
        return "unknown"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def static_url(name: str) -> str:
    """Where a static file is served, with its content version."""
    return f"{PREFIX}/static/{name}?v={STATIC_VERSION[name]}"


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.console", "templates"),
    # every {{ }} is escaped; no template marks user data |safe
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters.update(pretty=pretty, seconds=seconds)
TEMPLATES.globals.update(static_url=static_url, prefix=PREFIX)


def render(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    """A page from ``template``; the session (if any) gives the nav its CSRF token."""
    session = getattr(request.state, "console_session", None)
    page = TEMPLATES.get_template(template).render(
        session=session, path=request.url.path, **context
    )
    return HTMLResponse(page, status, headers={"Cache-Control": "no-store"})


def secure(response: Response) -> Response:
    """``response`` with the console's security headers."""
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A refusal as a page."""
    return render(request, "error.html", {"status": status, "message": message}, status)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ConsoleRoute(APIRoute):
    """A console route: its errors become pages and every answer carries the security headers."""

    def get_route_handler(self) -> Handler:
        """The route's handler, wrapped."""
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = RedirectResponse(SIGN_IN, 303)
            except ConsoleError as exc:
                response = error_page(request, exc.status, exc.message)
                response.headers.update(exc.headers)
            except ApiError as exc:
                response = error_page(request, exc.status, exc.detail)
            except RequestValidationError:
                response = error_page(request, 400, "The request was not understood.")
            except HTTPException as exc:
                response = error_page(request, exc.status_code, str(exc.detail))
            except redis.RedisError:
                response = error_page(request, 503, "Redis cannot be reached; try again shortly.")
                response.headers["Retry-After"] = "1"
            return secure(response)

        return console_handler
