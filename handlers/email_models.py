"""What an email job is: the request (EmailJob and its attachments), the relay's settings, the
result.

Only pydantic and the standard library: the API validates email jobs with these without loading
the SMTP client (handlers/email.py sends them).
"""

from __future__ import annotations

import base64
import binascii
import re
from email.utils import getaddresses, parseaddr
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

MIB = 1024 * 1024
MAX_ATTACHMENT_BYTES = 10 * MIB

# Headers the handler writes itself; letting a caller set them would forge or split the message.
_RESERVED = frozenset(
    "from to cc bcc subject reply-to sender message-id date mime-version content-type "
    "content-transfer-encoding return-path".split()
)
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'


def _no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF")
    return value


def _address(value: str) -> str:
    value = _no_crlf(value.strip())
    _, addr = parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if len(getaddresses([value])) != 1 or not (at and local and domain) or " " in addr:
        raise ValueError(f"not an email address: {value!r}")
    return value


def _listify(value: object) -> object:
    return [value] if isinstance(value, str) else value


Address = Annotated[str, AfterValidator(_address)]
Addresses = Annotated[list[Address], BeforeValidator(_listify)]
HeaderText = Annotated[str, AfterValidator(_no_crlf)]


class SmtpConfig(BaseModel):
    """How to reach the SMTP relay; built once per worker from settings."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = "starttls"  # "tls" is implicit TLS (port 465)
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = Field(default=30.0, gt=0)
    default_from: Address
    # the name given in EHLO; None: this host's FQDN, looked up once per process
    local_hostname: str | None = None
    validate_certs: bool = True


class Attachment(BaseModel):
    """One attached file: inline base64 content or a URL fetched at send time."""

    # the "exactly one" rule, stated for the OpenAPI document and clients generated from it
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("content_base64", "url")
            ]
        }
    )

    filename: HeaderText = Field(min_length=1, max_length=255, pattern=r"^[^/\\]+$")
    content_type: str = Field(
        default="application/octet-stream", pattern=r"^[\w.+-]+/[\w.+-]+$", max_length=255
    )
    content_base64: str | None = None
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)

    @field_validator("content_base64")
    @classmethod
    def _decodes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Check the size before decoding so a huge payload is refused without being copied.
        if len(value) * 3 // 4 > MAX_ATTACHMENT_BYTES + 2:
            raise ValueError(f"inline attachment larger than {MAX_ATTACHMENT_BYTES} bytes")
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not valid base64: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        if (self.content_base64 is None) == (self.url is None):
            raise ValueError("give exactly one of content_base64 or url")
        return self


class EmailJob(BaseModel):
    """One email to send; validation failures are pydantic errors naming the field."""

    model_config = ConfigDict(
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )

    to: Addresses = Field(min_length=1, max_length=100)
    cc: Addresses = Field(default_factory=list, max_length=100)
    bcc: Addresses = Field(default_factory=list, max_length=100)
    from_: Address | None = Field(default=None, alias="from")
    reply_to: Addresses = Field(default_factory=list, max_length=10)
    subject: HeaderText = Field(default="", max_length=998)
    text: str | None = None
    html: str | None = Field(default=None, validate_default=True)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    attachments: list[Attachment] = Field(default_factory=list, max_length=20)

    @field_validator("html")
    @classmethod
    def _body_required(cls, html: str | None, info: ValidationInfo) -> str | None:
        if not html and "text" in info.data and not info.data["text"]:
            raise ValueError("text or html is required")
        return html

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _FIELD_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in _RESERVED:
                raise ValueError(f"header {name!r} is set from the job's own fields")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} must not contain CR or LF")
        return headers


class EmailResult(BaseModel):
    """What the relay accepted: the Message-ID and each recipient's fate."""

    message_id: str
    accepted: list[str]
    refused: dict[str, str] = Field(default_factory=dict)  # recipient -> SMTP reply
