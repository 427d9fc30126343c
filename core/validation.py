"""How a pydantic failure and a failed piece of work are told, in words and in one dict shape.

Only a failure's location and message are ever repeated: pydantic's own text (``str(exc)``)
echoes the input, which may hold a secret or a whole payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

MAX_DETAIL = 2000  # characters of an error's detail kept in a record


def where(loc: Iterable[Any], default: str = "body") -> str:
    """A pydantic location as dotted text (``operations.0.params.width``); ``default`` if empty."""
    return ".".join(str(part) for part in loc) or default


def describe(
    errors: ValidationError | Iterable[Mapping[str, Any]], default: str = "body"
) -> tuple[str, list[dict[str, Any]]]:
    """("loc: msg" of the first error, every error as {loc, msg, type}) for pydantic's errors."""
    raw = errors.errors() if isinstance(errors, ValidationError) else errors
    trimmed = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in raw
    ]
    if not trimmed:
        return "invalid input", trimmed
    first = trimmed[0]
    return f"{where(first['loc'], default)}: {first['msg']}", trimmed


def summary(errors: ValidationError | Iterable[Mapping[str, Any]], default: str = "body") -> str:
    """Just the "loc: msg" of the first error."""
    return describe(errors, default)[0]


def messages(errors: ValidationError | Iterable[Mapping[str, Any]], default: str = "body") -> str:
    """Every error's "loc: msg", joined by "; "."""
    _, trimmed = describe(errors, default)
    return "; ".join(f"{where(e['loc'], default)}: {e['msg']}" for e in trimmed)


def error_record(code: str, detail: str) -> dict[str, str]:
    """A failed job's or event's error as stored and shown: a machine code and bounded text."""
    return {"code": code, "detail": detail[:MAX_DETAIL]}
