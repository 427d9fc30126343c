"""One JSON shape for every error: {"code": machine code, "detail": human text[, "errors"]}."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    code: str
    detail: str
    errors: list[dict[str, Any]] | None = None


class ApiError(Exception):
    """An error the API answers with; raise it from routes and dependencies."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers, self.errors = headers, errors


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """Build the one error shape."""
    body = ErrorBody(code=code, detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for routes: the listed statuses answer with ErrorBody."""
    return {status: {"model": ErrorBody} for status in statuses}


def validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors, trimmed to what a caller needs: where, what, and the kind of failure."""
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, headers=exc.headers, errors=exc.errors)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(list(exc.errors()))
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    return error_response(422, "validation_error", f"{where}: {first['msg']}", errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        code = "invalid_json"  # FastAPI's words for a body model's JSON it could not decode
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; several routes
        # share a path shape (POST /v1/jobs/{kind}, GET /v1/jobs/{job_id}): name all of theirs
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


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
    return error_response(
        503,
        "redis_unavailable",
        "the job store is unreachable; try again shortly",
        headers={"Retry-After": "1"},
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "the gateway failed to handle this request")


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
