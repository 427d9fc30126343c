"""What the OpenAPI document says a job is: one request schema per kind, with an example.

The submit routes read the raw body and validate it by hand (FastAPI body models cost more per
request than the Redis write; bench/README.md), so FastAPI sees no body model to document. Each
kind's route points at ``<Kind>JobRequest``, which ``install`` adds to the document: the kind's
input schema (from the same pydantic model the route validates with) plus the envelope fields.
Not allOf(input, envelope): the inputs forbid unknown fields, which would refuse the envelope's.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from core.kinds import KINDS, Kind
from core.settings import Settings

_REF = "#/components/schemas/{model}"


def request_schema_name(kind: Kind) -> str:
    """The component name of ``kind``'s request body: EmailJobRequest for email."""
    return f"{kind.name.capitalize()}JobRequest"


def article(word: str) -> str:
    """``word`` with its indefinite article, for summaries ("an email", "a file")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def request_body(kind: Kind) -> dict[str, Any]:
    """The requestBody of ``kind``'s submit route, pointing at its component schema."""
    return {
        "required": True,
        "description": (
            f"{article(kind.name).capitalize()} job's input, plus optional callback_url, and "
            "run_at or delay_seconds"
        ),
        "content": {
            "application/json": {
                "schema": {"$ref": _REF.format(model=request_schema_name(kind))},
                "example": dict(kind.example),
            }
        },
    }


def _envelope(max_delay: int) -> dict[str, dict[str, Any]]:
    # Exactly what tasks/submit.py accepts, so the document neither promises nor refuses more.
    return {
        "callback_url": {
            "anyOf": [{"type": "string", "maxLength": 2048}, {"type": "null"}],
            "description": "POSTed the job's outcome, signed (Standard Webhooks); a public "
            "https URL unless the outbound policy allows others",
        },
        "run_at": {
            "type": "string",
            "format": "date-time",
            "description": f"when to run: ISO 8601 with a zone, at most {max_delay} s ahead",
        },
        "delay_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": max_delay,
            "description": "when to run, in seconds from now (not with run_at)",
        },
    }


def kind_schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    """Component schemas: each kind's ``<Kind>JobRequest`` and the models it refers to."""
    mode: Literal["validation"] = "validation"
    inputs = [(kind.input, mode) for kind in KINDS.values()]
    names, document = models_json_schema(inputs, ref_template=_REF)
    defs: dict[str, dict[str, Any]] = document.get("$defs", {})
    envelope = _envelope(settings.max_delay_seconds)
    schemas: dict[str, dict[str, Any]] = {}
    for kind in KINDS.values():
        ref = names[(kind.input, mode)]["$ref"]
        own = copy.deepcopy(defs.pop(ref.rsplit("/", 1)[1]))
        own["title"] = request_schema_name(kind)
        own["properties"] = {**own.get("properties", {}), **envelope}
        own["not"] = {"required": ["run_at", "delay_seconds"]}  # one due time, not two
        own["examples"] = [dict(kind.example)]
        schemas[request_schema_name(kind)] = own
    return {**defs, **schemas}


def install(app: FastAPI, settings: Settings) -> None:
    """Add the kinds' request schemas to ``app``'s OpenAPI document."""
    build = app.openapi
    added: list[bool] = []  # built on the first request for the document, not at start-up

    def openapi() -> dict[str, Any]:
        schema = build()
        if not added:
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body in kind_schemas(settings).items():
                if components.setdefault(name, body) != body:
                    raise RuntimeError(f"two different OpenAPI schemas are named {name}")
            added.append(True)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
