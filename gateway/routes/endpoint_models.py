"""The endpoints API's request and response models, with the checks on what an endpoint may set."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from core.statuses import EndpointStatus
from gateway.body import encodable
from gateway.routes.dead_letters import IsoTime
from gateway.routes.jobs import DeliveryView

# RFC 9110 token characters; what a header name may be
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the delivery itself or by the connection: an endpoint may not override them
_RESERVED = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "content-type", "content-encoding", "expect",
    }
)  # fmt: skip
MAX_HEADERS = 20
MAX_HEADER_BYTES = 4096


def _utf8(value: str) -> str:
    # a JSON string may hold a lone surrogate (an escaped \ud800); Redis stores text as UTF-8
    if not encodable(value):
        raise ValueError("must be valid Unicode")
    return value


Text = Annotated[str, AfterValidator(_utf8)]
Url = Annotated[Text, Field(min_length=1, max_length=2048)]
Glob = Annotated[Text, Field(min_length=1, max_length=200)]
EventTypes = Annotated[list[Glob], Field(min_length=1, max_length=100)]
Sources = Annotated[list[Glob], Field(max_length=100)]
Description = Annotated[Text, Field(max_length=1000)]
RateLimit = Annotated[float, Field(gt=0, le=100_000)]
MaxInFlight = Annotated[int, Field(ge=1, le=1000)]


def _headers(value: dict[str, str]) -> dict[str, str]:
    """Extra request headers: tokens for names, one printable line for values, none of ours."""
    if len(value) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    size = 0
    for name, text in value.items():
        lowered = name.lower()
        if not _TOKEN.match(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if lowered in _RESERVED or lowered.startswith("webhook-"):
            raise ValueError(f"header {name!r} is set by the gateway and cannot be overridden")
        if any(not (" " <= ch <= "~") for ch in text):
            raise ValueError(f"header {name!r} must be printable ASCII on one line")
        size += len(name) + len(text) + 4
    if size > MAX_HEADER_BYTES:
        raise ValueError(f"headers take at most {MAX_HEADER_BYTES} bytes together")
    return {name: text.strip() for name, text in value.items()}


Headers = Annotated[dict[str, str], AfterValidator(_headers)]


class EndpointIn(BaseModel):
    """A new endpoint: where to send, what to send it, and how fast."""

    model_config = ConfigDict(extra="forbid")

    url: Url
    event_types: EventTypes = Field(default_factory=lambda: ["*"])
    sources: Sources = Field(default_factory=list)
    description: Description = ""
    rate_limit: RateLimit | None = None
    max_in_flight: MaxInFlight = 32
    ordered: bool = False
    headers: Headers = Field(default_factory=dict)


class EndpointPatch(BaseModel):
    """Fields to change; those left out stay as they are (rate_limit null: no limit)."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    event_types: EventTypes | None = None
    sources: Sources | None = None
    description: Description | None = None
    rate_limit: RateLimit | None = None
    max_in_flight: MaxInFlight | None = None
    ordered: bool | None = None
    headers: Headers | None = None

    @field_validator("url", "event_types", "sources", "description", "max_in_flight", "ordered")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # null means "no limit" for rate_limit only; for the rest, leave the field out
        if value is None:
            raise ValueError("may not be null; leave it out to keep it")
        return value


class EndpointView(BaseModel):
    """An endpoint as the operator sees it (no secret)."""

    id: str
    url: str
    event_types: list[str]
    sources: list[str]
    description: str
    rate_limit: float | None
    max_in_flight: int
    ordered: bool
    headers: dict[str, str]
    status: EndpointStatus
    disabled_reason: str | None
    failure_streak: int
    failing_since: str | None
    last_success_at: str | None
    last_failure_at: str | None
    created_at: str | None
    updated_at: str | None
    previous_secret_until: str | None = Field(
        None, description="until when the secret before the last rotation also signs"
    )
    deliveries: int = Field(0, description="deliveries on its list (the newest 10 000 kept)")


class EndpointCreated(EndpointView):
    """The 201 answer: the endpoint and its signing secret (shown only now and on rotation)."""

    secret: str


class EndpointPage(BaseModel):
    """One page of endpoints, oldest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[EndpointView]
    next_cursor: str | None


class DeliveryPage(BaseModel):
    """One page of an endpoint's deliveries, newest first."""

    items: list[DeliveryView]
    next_cursor: str | None


class Rotate(BaseModel):
    """How long the current secret keeps signing beside the new one (default the setting's)."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(None, ge=0, le=30 * 24 * 3600)


class SecretRotated(BaseModel):
    """The new secret (shown only now) and until when the previous one also signs."""

    id: str
    secret: str
    previous_secret_until: str | None


class Recover(BaseModel):
    """Send again every failed or dead delivery to the endpoint offered since this time."""

    model_config = ConfigDict(extra="forbid")

    since: IsoTime
    limit: int = Field(1000, ge=1, le=10_000)
