"""Every error the API answers with: one JSON shape, one exception root, one table of codes.

The shape: ``{"code": machine code, "detail": human text[, "errors": [{loc, msg, type}, ...]]}``.

Exceptions (routes and dependencies raise them; the handlers installed here answer)::

    ApiError(code, detail)      the one root: its status is CODES' line for the code
    └── SignatureError          a webhook failed verification (gateway/webhooks/signatures.py)

A raise site names only the code; the status comes from the table below, so a code means one
status everywhere by construction (a class per status would let a code drift between two).
Errors of the layers below know nothing of HTTP but carry a code of this table, and the route
that catches one raises ``ApiError(exc.code, ...)``: ``UrlRejected`` (handlers/outbound), and
``EventUnreadable`` (handlers/webhooks). A bad webhook sources file (core/sources.py
``SourcesError``) is not an answer at all: it stops the process at start-up.

Answered here without an ApiError: FastAPI's request validation (422 ``validation_error``),
Starlette's HTTP errors (the status's first, generic code), Redis trouble (503
``redis_unavailable``) and anything unexpected (500 ``internal_error``). An oversized request
head gets 431 ``headers_too_large`` from the protocol, before any of this (gateway/http_limits.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.validation import describe

log = logging.getLogger(__name__)

# Every code the API answers with, by status; each status's first code is its generic one (what
# a bare HTTP error of that status is called).
# fmt: off
CODES: Final[Mapping[int, tuple[str, ...]]] = {
    400: ("bad_request", "invalid_json", "bad_content_length", "invalid_multipart",
          "invalid_idempotency_key",
          # a callback URL the outbound guard refuses (handlers/outbound UrlRejected)
          "url_rejected", "url_invalid", "url_scheme_not_allowed", "url_blocked_address",
          "url_unresolvable"),
    401: ("unauthorized", "missing_api_key", "malformed_api_key", "invalid_api_key",
          # a webhook's signature (gateway/webhooks/signatures.py SignatureError)
          "webhook_missing_header", "webhook_malformed_header",
          "webhook_timestamp_out_of_tolerance", "webhook_bad_signature"),
    # a valid API key that is not in ADMIN_API_KEYS, on an operator's route
    403: ("forbidden", "admin_required"),
    404: ("not_found", "unknown_kind", "job_not_found", "unknown_source", "event_not_found",
          "file_not_found", "dead_letter_not_found", "endpoint_not_found"),
    405: ("method_not_allowed",),
    409: ("conflict", "idempotency_key_reused"),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    422: ("validation_error", "missing_event_type"),
    429: ("rate_limited",),
    431: ("headers_too_large",),
    500: ("internal_error",),
    503: ("unavailable", "redis_unavailable"),
}
# fmt: on
STATUS: Final[Mapping[str, int]] = {
    code: status for status, codes in CODES.items() for code in codes
}


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    code: str
    detail: str
    errors: list[dict[str, Any]] | None = None


class ApiError(Exception):
    """An error the API answers with, in the status CODES gives its code; raise it from routes."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = STATUS[code]  # a code missing from CODES is our bug: a 500 says so
        self.code, self.detail = code, detail
        self.headers, self.errors = headers, errors


def invalid_input(
    errors: ValidationError | Iterable[Mapping[str, Any]], default: str = "body"
) -> ApiError:
    """The 422 for pydantic's errors: the first as "loc: msg", all of them under ``errors``."""
    summary, trimmed = describe(errors, default)
    return ApiError("validation_error", summary, errors=trimmed)


def error_response(exc: ApiError) -> JSONResponse:
    """The one error shape for ``exc``, in its status."""
    return _answer(exc.status, exc.code, exc.detail, headers=exc.headers, errors=exc.errors)


def _answer(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for routes: the listed statuses answer with ErrorBody."""
    return {status: {"model": ErrorBody} for status in statuses}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_input(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = CODES[exc.status_code][0] if exc.status_code in CODES else "error"
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        code = "invalid_json"  # FastAPI's words for a body model's JSON it could not decode
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; name what the
        # OpenAPI document says the URL answers instead (see _allowed_methods)
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return _answer(exc.status_code, code, str(exc.detail), headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    # The documented routes matching the URL; a concrete path's (/v1/jobs/email: POST) before a
    # template's (/v1/jobs/{job_id}: GET), as OpenAPI matches paths
    concrete: set[str] = set()
    templated: set[str] = set()
    for route in request.app.router.routes:
        if not getattr(route, "include_in_schema", True):
            continue
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match != Match.NONE:
            found = concrete if "{" not in getattr(route, "path", "{") else templated
            found |= set(getattr(route, "methods", None) or ())
    return sorted(concrete or templated)


# Error replies of a Redis that cannot serve right now but will (loading its data, a replica
# without its primary, out of memory, a failing disk save, a busy script): the client should try
# again, so 503. Every other error reply (WRONGTYPE, a syntax error) is our bug: 500. redis-py
# turns some into classes (and strips their prefix from the text); the rest are matched by prefix.
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # with BusyLoadingError (LOADING)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
# Inside a script, Redis may wrap the reply: "ERR Error running script (...): ... -READONLY ...".
_UNAVAILABLE_REPLY = re.compile(
    r"^(?:ERR Error running script.*?-)?"
    r"(?:LOADING|READONLY|OOM|MISCONF|MASTERDOWN|NOREPLICAS|BUSY |TRYAGAIN|CLUSTERDOWN)",
    re.DOTALL,
)


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis can't serve right now (503), rather than a bug of ours."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and bool(
        _UNAVAILABLE_REPLY.match(str(exc))
    )


async def _redis_reply(request: Request, exc: Exception) -> JSONResponse:
    if redis_unavailable(exc):
        return await _redis_down(request, exc)
    return await _unexpected(request, exc)


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s: %.100s", type(exc).__name__, exc)
    detail = "the job store is unreachable; try again shortly"
    return error_response(ApiError("redis_unavailable", detail, headers={"Retry-After": "1"}))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(ApiError("internal_error", "the gateway failed to handle this request"))


def _document_error_shape(app: FastAPI) -> None:
    """OpenAPI: every 422 is documented as ErrorBody (the answer), not FastAPI's own shape."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            ours = "#/components/schemas/ErrorBody"
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    answer = operation.get("responses", {}).get("422")
                    if answer is not None:
                        answer["content"] = {"application/json": {"schema": {"$ref": ours}}}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.setdefault("ErrorBody", ErrorBody.model_json_schema())
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    """Register the central handlers: every error leaves in the one shape, documented as such."""
    _document_error_shape(app)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(redis.exceptions.ResponseError, _redis_reply)
    app.add_exception_handler(Exception, _unexpected)
