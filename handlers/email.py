"""Send one email over SMTP: network trouble and SMTP 4xx are transient, SMTP 5xx permanent."""

from __future__ import annotations

import base64
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

import aiosmtplib

from handlers.email_models import (
    MAX_ATTACHMENT_BYTES,
    Attachment,
    EmailJob,
    EmailResult,
    SmtpConfig,
)
from handlers.errors import HandlerError, PermanentError, TransientError
from handlers.smtp_pool import SmtpPool

Fetch = Callable[[str, int], Awaitable[bytes]]


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
