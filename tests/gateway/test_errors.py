"""The API's error vocabulary: every code raised anywhere is in the one table, with one status."""

from __future__ import annotations

import ast
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from gateway.errors import CODES, STATUS, ApiError, invalid_input
from gateway.webhooks.signatures import ErrorCode, SignatureError
from handlers.outbound import UrlRejected
from handlers.webhooks import EventUnreadable
from tests.conftest import AUTH, ROOT


def _literal_codes(folder: str, exception: str) -> set[tuple[str, str]]:
    """(file, code) for every ``exception("code", ...)`` written with a literal code."""
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == exception
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add((str(path.relative_to(ROOT)), node.args[0].value))
    return found


def test_a_code_has_one_status() -> None:
    listed = [code for codes in CODES.values() for code in codes]
    assert len(listed) == len(set(listed)) == len(STATUS)


def test_every_code_raised_in_the_gateway_is_in_the_table() -> None:
    raised = _literal_codes("gateway", "ApiError") | _literal_codes("gateway", "SignatureError")
    assert len(raised) > 20  # the scan sees the raise sites
    assert {(path, code) for path, code in raised if code not in STATUS} == set()


def test_errors_from_below_carry_codes_of_the_table() -> None:
    # a callback URL the guard refuses is the caller's bad request
    refused = {code for _, code in _literal_codes("handlers", "UrlRejected")}
    assert {UrlRejected.code, *refused} <= set(CODES[400])
    assert {STATUS[code] for code in get_args(ErrorCode)} == {401}
    assert STATUS[EventUnreadable.code] == 400
    assert issubclass(SignatureError, ApiError)


def test_bare_http_errors_keep_their_generic_codes() -> None:
    generic = {status: codes[0] for status, codes in CODES.items()}
    assert generic == generic | {
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


def test_an_unknown_code_is_refused_where_it_is_raised() -> None:
    with pytest.raises(KeyError):
        ApiError("no_such_code", "a typo must not leave as some status")


class _Input(BaseModel):
    count: int


def test_pydantic_errors_become_one_422() -> None:
    with pytest.raises(ValidationError) as info:
        _Input.model_validate({"count": "many"})
    error = invalid_input(info.value)
    assert (error.status, error.code) == (422, "validation_error")
    message = "Input should be a valid integer, unable to parse string as an integer"
    assert error.detail == f"count: {message}"  # not pydantic's text, which echoes the input
    assert error.errors == [{"loc": ["count"], "msg": message, "type": "int_parsing"}]


def test_a_raise_site_answers_in_its_code_s_status(client: TestClient) -> None:
    response = client.post("/v1/jobs/echo", headers={**AUTH, "Idempotency-Key": ""}, json={})
    assert response.status_code == STATUS["invalid_idempotency_key"] == 400
    assert response.json() == {
        "code": "invalid_idempotency_key",
        "detail": "Idempotency-Key must be 1 to 255 characters",
    }
