"""The one pydantic-error formatter and the one stored error shape."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from core.validation import MAX_DETAIL, describe, error_record, messages, summary


class _Inner(BaseModel):
    width: int


class _Input(BaseModel):
    name: str
    sizes: list[_Inner]


def _failure(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Input.model_validate(data)
    return info.value


def test_describe_names_where_and_what_never_the_input() -> None:
    exc = _failure({"sizes": [{"width": "secret-value"}]})
    text, errors = describe(exc)
    assert text == "name: Field required"
    assert [e["loc"] for e in errors] == [["name"], ["sizes", 0, "width"]]
    assert {e["type"] for e in errors} == {"missing", "int_parsing"}
    everything = f"{text} {errors} {messages(exc)}"
    assert "secret-value" not in everything  # pydantic's own str(exc) would show it
    assert messages(exc) == (
        "name: Field required; sizes.0.width: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_an_error_of_the_whole_value_is_named_by_the_default() -> None:
    exc = _failure("not an object")
    assert summary(exc, "payload").startswith("payload: ")
    assert summary(exc.errors(), "source").startswith("source: ")


def test_error_record_bounds_the_detail() -> None:
    record = error_record("boom", "x" * (MAX_DETAIL + 10))
    assert record == {"code": "boom", "detail": "x" * MAX_DETAIL}
