"""Pure routing of inbound webhook events: reading the event and its type, matching type patterns.

Patterns are shell-style globs matched case-sensitively against the whole type (``fnmatchcase``):
``push``, ``invoice.*`` (``*`` also crosses dots: it matches ``invoice.payment.failed``), ``*``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import parse_qs

FORM = "application/x-www-form-urlencoded"


class EventUnreadable(ValueError):
    """An authentic body we cannot read as an event (not JSON, or a form without ``payload``)."""

    code = "invalid_json"  # the machine code the API answers with and a failed event records


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lower-cased (``''`` when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    """Whether a bare media type is JSON (``application/json`` or ``*/*+json``)."""
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def event_document(raw: bytes, media: str) -> Any:
    """The event as JSON: the body itself, or a form's ``payload`` field (GitHub's form mode)."""
    text: str | bytes = raw
    if media == FORM:
        try:
            fields = parse_qs(raw.decode("utf-8"), max_num_fields=50, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise EventUnreadable("the form body is not valid url-encoded UTF-8") from exc
        if len(fields.get("payload", [])) != 1:
            raise EventUnreadable("the form body has no single payload field")
        text = fields["payload"][0]
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EventUnreadable("the event is not valid JSON") from exc


def read_path(document: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``"type"``, ``"event.name"``) of a JSON document, or None."""
    value = document
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def event_type_at(document: Any, path: str) -> str | None:
    """The event type at ``path``: a non-empty string, else None."""
    value = read_path(document, path)
    return value if isinstance(value, str) and value else None


def matches(event_type: str, patterns: Sequence[str]) -> bool:
    """Whether ``event_type`` matches any of ``patterns``."""
    return any(fnmatchcase(event_type, pattern) for pattern in patterns)


def matching_routes(event_type: str, routes: Sequence[Sequence[str]]) -> list[int]:
    """Indexes (in order) of the routes, each given by its patterns, that ``event_type`` matches."""
    return [index for index, patterns in enumerate(routes) if matches(event_type, patterns)]


def job_payload(template: dict[str, Any], event_key: str | None, document: Any) -> dict[str, Any]:
    """A job's payload from a route's template: the template, plus the event under ``event_key``."""
    payload = dict(template)
    if event_key:
        payload[event_key] = document
    return payload
