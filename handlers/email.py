"""Send one email over SMTP: network trouble and SMTP 4xx are transient, SMTP 5xx permanent."""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from collections.abc import Awaitable, Callable
from email import encoders
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, getaddresses, make_msgid, parseaddr
from typing import Annotated, Literal

import aiosmtplib
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

from handlers.errors import HandlerError, PermanentError, TransientError
from handlers.smtp_pool import SmtpPool

MIB = 1024 * 1024
MAX_ATTACHMENT_BYTES = 10 * MIB
Fetch = Callable[[str, int], Awaitable[bytes]]

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

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, extra="forbid")

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


def _envelope(addresses: list[str]) -> list[str]:
    return list(dict.fromkeys(parseaddr(a)[1] for a in addresses))  # dedupe, keep order


def _excerpt(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _message_id(given: str | None, sender: str) -> str:
    if given is None:
        return make_msgid(domain=sender.rpartition("@")[2] or None)
    bare = given.strip("<>")
    if not bare or any(c.isspace() or c in "<>" for c in bare):
        raise PermanentError(f"invalid message id {given!r}", code="invalid_message_id")
    return f"<{bare}>"


async def _attachment_bytes(att: Attachment, fetch: Fetch | None, max_bytes: int) -> bytes:
    if att.content_base64 is not None:
        data = base64.b64decode(att.content_base64)
    elif fetch is None or att.url is None:
        detail = f"attachment {att.filename!r} has a url but no fetcher was given"
        raise PermanentError(detail, code="attachment_fetch_unavailable")
    else:
        try:
            data = await fetch(att.url, max_bytes)  # fetchers should raise HandlerErrors ...
        except OSError as exc:  # ... but a raw network error is still worth a retry
            code = "timeout" if isinstance(exc, TimeoutError) else "attachment_fetch_failed"
            detail = f"fetching {att.filename!r} failed: {_excerpt(str(exc)) or code}"
            raise TransientError(detail, code=code) from exc
    if len(data) > max_bytes:
        detail = f"attachment {att.filename!r} is larger than {max_bytes} bytes"
        raise PermanentError(detail, code="attachment_too_large")
    return data


# Bodies that are not plain ASCII go quoted-printable: readable in transit, unlike base64.
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP


def _text_part(text: str, subtype: str) -> MIMEText:
    return MIMEText(text, subtype, "us-ascii" if text.isascii() else _UTF8_QP)  # type: ignore[arg-type]


def _header_text(value: str) -> str:
    return value if value.isascii() else Header(value, "utf-8").encode()


def _address_list(values: list[str]) -> str:
    # display names that are not ASCII are RFC 2047 encoded; addresses are written as given
    return ", ".join(formataddr(pair, "utf-8") for pair in getaddresses(values))


def _build(job: EmailJob, sender: str, message_id: str, files: list[bytes]) -> Message:
    # The email.mime classes (compat32) rather than EmailMessage: the default policy parses every
    # header it is given, 590 us a message against 130 here, the largest share of an email job's
    # CPU at hundreds of sends a second. Input is validated above (no CR/LF, real addresses).
    body: Message
    if job.text and job.html:
        body = MIMEMultipart(
            "alternative", _subparts=[_text_part(job.text, "plain"), _text_part(job.html, "html")]
        )
    elif job.text:
        body = _text_part(job.text, "plain")
    else:
        body = _text_part(job.html or "", "html")
    msg = body
    if job.attachments:
        msg = MIMEMultipart("mixed", _subparts=[body])
        for att, data in zip(job.attachments, files, strict=True):
            maintype, subtype = att.content_type.split("/", 1)
            part = MIMEBase(maintype, subtype)
            part.set_payload(data)
            encoders.encode_base64(part)
            name = att.filename if att.filename.isascii() else ("utf-8", "", att.filename)
            part.add_header("Content-Disposition", "attachment", filename=name)
            msg.attach(part)
    msg["From"] = _address_list([sender])
    msg["To"] = _address_list(job.to)
    if job.cc:
        msg["Cc"] = _address_list(job.cc)
    if job.reply_to:
        msg["Reply-To"] = _address_list(job.reply_to)
    msg["Subject"] = _header_text(job.subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    for name, value in job.headers.items():
        msg[name] = _header_text(value)
    return msg


def _reply_error(what: str, code: int, message: str) -> HandlerError:
    detail = f"{what}: {code} {_excerpt(message)}"
    if 500 <= code < 600:
        return PermanentError(detail, code="smtp_rejected")
    return TransientError(detail, code="smtp_transient" if code != 421 else "smtp_unavailable")


def _classify(exc: Exception) -> HandlerError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        replies = "; ".join(
            f"{r.recipient}: {r.code} {_excerpt(r.message, 80)}" for r in exc.recipients
        )
        if all(400 <= r.code < 500 for r in exc.recipients):
            return TransientError(f"all recipients deferred: {replies}", code="smtp_transient")
        return PermanentError(f"all recipients refused: {replies}", code="recipients_refused")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and exc.code >= 500:
        detail = f"SMTP authentication failed: {exc.code} {_excerpt(exc.message)}"
        return PermanentError(detail, code="smtp_auth_failed")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error("SMTP server replied", exc.code, exc.message)
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts subclass it
        return TransientError(f"SMTP timed out: {_excerpt(str(exc))}", code="timeout")
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in (exc, exc.__cause__)):
        # A certificate that fails verification now will fail on every retry too.
        return PermanentError(f"SMTP TLS failed: {_excerpt(str(exc))}", code="smtp_tls_failed")
    if isinstance(exc, OSError):  # includes SMTPConnectError and SMTPServerDisconnected
        return TransientError(f"SMTP unreachable: {_excerpt(str(exc))}", code="smtp_unavailable")
    # What is left (no STARTTLS, no AUTH offered, no SMTPUTF8) is a configuration mismatch.
    return PermanentError(f"SMTP: {_excerpt(str(exc))}", code="smtp_unsupported")


async def _send(
    msg: Message, sender: str, recipients: list[str], config: SmtpConfig, pool: SmtpPool | None
) -> dict[str, aiosmtplib.SMTPResponse]:
    if pool is not None:
        return await pool.send(msg, sender=sender, recipients=recipients)
    # A pool of one rather than aiosmtplib.send: one code path for both, the same errors.
    once = SmtpPool(config)
    try:
        return await once.send(msg, sender=sender, recipients=recipients)
    finally:
        await once.aclose()


async def send_email(
    job: EmailJob,
    config: SmtpConfig,
    *,
    message_id: str | None = None,
    fetch: Fetch | None = None,
    max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
    pool: SmtpPool | None = None,
) -> EmailResult:
    """Send one email through the configured relay; raise TransientError or PermanentError.

    ``pool`` holds sessions to ``config``'s relay open between emails; without one, this email
    has a session of its own, closed with QUIT once it is sent.
    """
    sender = job.from_ or config.default_from
    msg_id = _message_id(message_id, parseaddr(sender)[1])
    # Fetch before connecting so a slow download never holds an SMTP session open.
    files = [await _attachment_bytes(a, fetch, max_attachment_bytes) for a in job.attachments]
    msg = _build(job, sender, msg_id, files)
    recipients = _envelope(job.to + job.cc + job.bcc)  # bcc: envelope only, never a header
    password = config.password.get_secret_value() if config.password else None
    try:
        refused = await _send(msg, parseaddr(sender)[1], recipients, config, pool)
    except (aiosmtplib.SMTPException, OSError) as exc:
        error = _classify(exc)
        if password and password in error.detail:  # belt and braces: a relay could echo it
            error.detail = error.detail.replace(password, "***")
            error.args = (error.detail,)
        raise error from exc
    return EmailResult(
        message_id=msg_id,
        accepted=[r for r in recipients if r not in refused],
        refused={r: f"{resp.code} {resp.message}" for r, resp in refused.items()},
    )
