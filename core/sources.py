"""Webhook sources: the TOML file that declares them, read and checked once at startup (see README).

Both the API (schemes and secrets: gateway/webhooks/verifiers.py binds each verifier) and the
webhooks workers (routes, without secrets) load it. Secrets come from the environment; job kinds,
payload templates and destination URLs are checked here, without the network (the API resolves
destinations at start-up: core/destinations.py). A mistake in the file or a missing secret stops
the process at startup with a message naming the source and the field, never quoting a secret.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.kinds import KINDS
from core.validation import summary
from handlers.outbound import OutboundPolicy, UrlRejected, redact_url
from handlers.outbound.policy import parse_url
from handlers.signing import standard_webhooks_key
from handlers.webhooks import FORM, is_json

Scheme = Literal["standard", "github", "stripe", "hmac"]

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_HMAC_ONLY = ("header", "algorithm", "encoding", "prefix", "timestamp_header", "id_header")


class SourcesError(Exception):
    """The sources file cannot be used; the message says where and why."""


class JobRoute(BaseModel):
    """Start a job: ``payload`` as given, plus the sender's event under ``event_key`` if set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    payload: dict[str, Any] = Field(default_factory=dict)
    event_key: str | None = Field(None, min_length=1)
    callback_url: str | None = None


class Route(BaseModel):
    """Event-type patterns and where a matching event goes: URLs to forward to, a job, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[str] = Field(min_length=1)
    forward: list[str] = Field(default_factory=list)
    job: JobRoute | None = None

    def urls(self) -> list[str]:
        """Every URL this route sends to: its forwards, then its job's callback."""
        callback = self.job.callback_url if self.job is not None else None
        return [*self.forward, *([callback] if callback else [])]

    @model_validator(mode="after")
    def _has_destination(self) -> Route:
        if not self.forward and self.job is None:
            raise ValueError("a route needs forward URLs, a job, or both")
        return self


class Source(BaseModel):
    """One sender: how its requests are verified, which types it may send, and its routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    scheme: Scheme
    secrets_env: list[str] = Field(min_length=1)
    tolerance: int | None = Field(None, ge=1, le=24 * 3600)
    # accepted event types (globs); others are acknowledged and recorded as ignored
    events: list[str] = Field(default_factory=lambda: ["*"])
    # where the type is: a header, or a dotted path in the JSON event (defaults by scheme)
    event_type_header: str | None = None
    event_type_path: str | None = None
    # generic HMAC only
    header: str | None = None
    algorithm: Literal["sha256", "sha512"] | None = None
    encoding: Literal["hex", "base64"] | None = None
    prefix: str | None = None
    timestamp_header: str | None = None
    id_header: str | None = None
    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Source:
        if self.scheme == "hmac":
            if not self.header:
                raise ValueError("scheme hmac needs header (the signature header's name)")
            if self.tolerance is not None and not self.timestamp_header:
                raise ValueError("tolerance needs timestamp_header for scheme hmac")
        else:
            given = [name for name in _HMAC_ONLY if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for scheme hmac")
        if self.scheme == "github" and self.tolerance is not None:
            raise ValueError("GitHub signs no timestamp: tolerance does not apply")
        if self.event_type_header and self.event_type_path:
            raise ValueError("give event_type_header or event_type_path, not both")
        return self

    @property
    def type_header(self) -> str | None:
        """The header holding the event type, lower-case (GitHub: X-GitHub-Event), or None."""
        if self.event_type_header:
            return self.event_type_header.lower()
        if self.scheme == "github" and not self.event_type_path:
            return "x-github-event"
        return None

    @property
    def type_path(self) -> str:
        """The dotted JSON path of the event type, when it is not read from a header."""
        return self.event_type_path or "type"

    def accepts(self, media: str) -> bool:
        """Whether a body of bare media type ``media`` is accepted: JSON; GitHub also its form."""
        return is_json(media) or (self.scheme == "github" and media == FORM)


@dataclass(frozen=True)
class LoadedSource:
    """A source as loaded: its config and the secrets its ``secrets_env`` names, in that order."""

    config: Source
    secrets: tuple[str, ...] = field(default=(), repr=False)


def _checked_secrets(source: Source, secrets: list[str]) -> tuple[str, ...]:
    """Refuse a secret the scheme cannot use now, not on every request (the message names none)."""
    if source.scheme == "standard":
        for secret in secrets:
            standard_webhooks_key(secret)
    return tuple(secrets)


def _secrets(source: Source, environ: Mapping[str, str]) -> list[str]:
    missing = [name for name in source.secrets_env if not environ.get(name)]
    if missing:
        raise SourcesError(
            f"source {source.name!r}: environment variable(s) {', '.join(missing)} not set "
            "(secrets_env names variables; the secrets are never written in the file)"
        )
    return [environ[name] for name in source.secrets_env]


def _check_shapes(source: Source, policy: OutboundPolicy) -> None:
    for number, route in enumerate(source.routes, 1):
        where = f"source {source.name!r} route {number}"
        if route.job is not None:
            if route.job.kind not in KINDS:
                raise SourcesError(f"{where}: unknown job kind {route.job.kind!r}")
            _check_template(route.job, KINDS[route.job.kind].input, where)
        for url in route.urls():
            try:
                parse_url(url, policy)
            except UrlRejected as exc:
                raise SourcesError(
                    f"{where}: {redact_url(url)} refused ({exc.code}: {exc.detail})"
                ) from None


def _check_template(job: JobRoute, model: type[BaseModel], where: str) -> None:
    """The static part of a job's payload must already fit the kind (the event fills event_key)."""
    sample = {**job.payload, job.event_key: {}} if job.event_key else dict(job.payload)
    try:
        model.model_validate(sample)
    except ValidationError as exc:
        problems = [
            e for e in exc.errors() if not job.event_key or e["loc"][:1] != (job.event_key,)
        ]
        if problems:
            raise SourcesError(f"{where}: job payload {summary(problems, 'payload')}") from None


def parse_sources(
    data: Mapping[str, Any],
    policy: OutboundPolicy,
    environ: Mapping[str, str] | None = None,
    *,
    with_secrets: bool = True,
) -> dict[str, LoadedSource]:
    """Sources from parsed TOML (``[sources.<name>]`` tables), by name."""
    environ = os.environ if environ is None else environ
    unknown = set(data) - {"sources"}
    if unknown:
        raise SourcesError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    tables = data.get("sources", {})
    if not isinstance(tables, dict):
        raise SourcesError("sources must be a table of [sources.<name>] tables")
    loaded: dict[str, LoadedSource] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise SourcesError(f"source {name!r} must be a table")
        try:
            source = Source.model_validate({"name": name, **table})
        except ValidationError as exc:
            # only the location and message: pydantic's own text would echo the input
            raise SourcesError(f"source {name!r}: {summary(exc, 'source')}") from None
        _check_shapes(source, policy)
        if not with_secrets:
            loaded[name] = LoadedSource(source)
            continue
        try:
            loaded[name] = LoadedSource(source, _checked_secrets(source, _secrets(source, environ)))
        except ValueError as exc:  # a secret the scheme cannot use (message names no secret)
            raise SourcesError(f"source {name!r}: {exc}") from None
    return loaded


def load_sources(
    path: Path | None,
    policy: OutboundPolicy,
    environ: Mapping[str, str] | None = None,
    *,
    with_secrets: bool = True,
) -> dict[str, LoadedSource]:
    """The sources declared in ``path`` (none when no file is configured)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SourcesError(f"WEBHOOK_SOURCES_FILE {path}: {exc}") from None
    try:
        return parse_sources(data, policy, environ, with_secrets=with_secrets)
    except SourcesError as exc:
        raise SourcesError(f"WEBHOOK_SOURCES_FILE {path}: {exc}") from None
