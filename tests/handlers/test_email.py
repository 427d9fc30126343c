"""send_email against a real aiosmtpd server on loopback; checks what actually arrived."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr, ValidationError

from handlers.email import send_email
from handlers.email_models import EmailJob, EmailResult, SmtpConfig
from handlers.errors import PermanentError, TransientError
from handlers.smtp_pool import SmtpPool
from tests.smtp_sink import Recorder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, SmtpConfig]]:
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield recorder, config_for(port)
    finally:
        controller.stop()


def config_for(port: int, **overrides: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout": 5,
        "default_from": "Gateway <noreply@gateway.test>",
    }
    return SmtpConfig.model_validate(values | overrides)


def job(**fields: Any) -> EmailJob:
    return EmailJob.model_validate(
        {"to": "alice@example.com", "subject": "Hi", "text": "hello"} | fields
    )


def send(email: EmailJob, config: SmtpConfig, **kwargs: Any) -> EmailResult:
    return asyncio.run(send_email(email, config, **kwargs))


def test_message_arrives_with_headers_parts_and_stable_id(
    smtp: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = smtp
    email = job(
        to=["Alice <alice@example.com>", "bob@example.com"],
        cc="carol@example.com",
        bcc=["dave@example.com"],
        **{"from": "Sender <sender@example.com>"},
        reply_to="replies@example.com",
        subject="Quarterly report",
        text="plain body",
        html="<p>html body</p>",
        headers={"X-Job-Id": "job-123"},
    )
    result = send(email, config, message_id="<job-123@gateway.test>")

    assert result.message_id == "<job-123@gateway.test>"
    assert result.accepted == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    assert result.refused == {}
    [got] = recorder.received
    assert got.mail_from == "sender@example.com"
    assert "dave@example.com" in got.rcpt_tos  # bcc gets the mail ...
    assert "dave@example.com" not in got.message.as_string()  # ... but no header names it
    assert got.message["Bcc"] is None
    msg = got.message
    assert msg["From"] == "Sender <sender@example.com>"
    assert msg["To"] == "Alice <alice@example.com>, bob@example.com"
    assert msg["Cc"] == "carol@example.com"
    assert msg["Reply-To"] == "replies@example.com"
    assert msg["Subject"] == "Quarterly report"
    assert msg["Message-ID"] == "<job-123@gateway.test>"
    assert msg["X-Job-Id"] == "job-123"
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and text.get_content().strip() == "plain body"
    assert html is not None and html.get_content().strip() == "<p>html body</p>"


def test_default_from_and_generated_message_id(smtp: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = smtp
    result = send(job(), config, message_id="job-9@gateway.test")
    [got] = recorder.received
    assert got.mail_from == "noreply@gateway.test"
    assert got.message["From"] == "Gateway <noreply@gateway.test>"
    assert result.message_id == got.message["Message-ID"] == "<job-9@gateway.test>"

    generated = send(job(), config)
    assert generated.message_id.startswith("<") and generated.message_id.endswith(">")
    assert recorder.received[1].message["Message-ID"] == generated.message_id


def test_inline_and_url_attachments_arrive(smtp: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = smtp
    pdf, png = b"%PDF-1.4 fake", b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    fetched: list[tuple[str, int]] = []

    async def fetch(url: str, max_bytes: int) -> bytes:
        fetched.append((url, max_bytes))
        return png

    email = job(
        html="<b>see attached</b>",
        attachments=[
            {
                "filename": "report.pdf",
                "content_type": "application/pdf",
                "content_base64": base64.b64encode(pdf).decode(),
            },
            {"filename": "chart.png", "content_type": "image/png", "url": "https://files.test/c"},
        ],
    )
    send(email, config, fetch=fetch, max_attachment_bytes=4096)

    assert fetched == [("https://files.test/c", 4096)]
    parts = list(recorder.received[0].message.iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("report.pdf", "application/pdf"),
        ("chart.png", "image/png"),
    ]
    assert [p.get_content() for p in parts] == [pdf, png]


def test_url_attachment_without_fetcher_or_too_large_is_permanent(
    smtp: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = smtp
    email = job(attachments=[{"filename": "a.bin", "url": "https://files.test/a"}])
    with pytest.raises(PermanentError) as no_fetch:
        send(email, config)
    assert no_fetch.value.code == "attachment_fetch_unavailable"

    async def fetch(url: str, max_bytes: int) -> bytes:
        return b"x" * (max_bytes + 1)  # a fetcher that ignores the limit is still caught

    with pytest.raises(PermanentError) as too_big:
        send(email, config, fetch=fetch, max_attachment_bytes=10)
    assert too_big.value.code == "attachment_too_large"
    assert recorder.received == []


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ("451 4.3.0 Try again later", TransientError, "smtp_transient"),
        ("421 4.3.2 Shutting down", TransientError, "smtp_unavailable"),
        ("554 5.7.1 Message rejected as spam", PermanentError, "smtp_rejected"),
    ],
)
def test_data_reply_is_classified(
    smtp: tuple[Recorder, SmtpConfig], reply: str, error: type[Exception], code: str
) -> None:
    recorder, config = smtp
    recorder.data_reply = reply
    with pytest.raises(error) as caught:
        send(job(), config)
    assert getattr(caught.value, "code", None) == code
    assert reply.split()[0] in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ("451 4.2.1 Mailbox busy", TransientError, "smtp_transient"),
        ("550 5.1.1 No such user", PermanentError, "recipients_refused"),
    ],
)
def test_all_recipients_refused_is_classified_by_reply(
    smtp: tuple[Recorder, SmtpConfig], reply: str, error: type[Exception], code: str
) -> None:
    recorder, config = smtp
    recorder.rcpt_replies = {"alice@example.com": reply, "bob@example.com": reply}
    with pytest.raises(error) as caught:
        send(job(to=["alice@example.com", "bob@example.com"]), config)
    assert getattr(caught.value, "code", None) == code
    assert recorder.received == []


def test_partial_refusal_succeeds_and_reports_the_refused(
    smtp: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = smtp
    recorder.rcpt_replies = {"ghost@example.com": "550 5.1.1 No such user"}
    result = send(job(to=["alice@example.com", "ghost@example.com"]), config)
    assert result.accepted == ["alice@example.com"]
    assert result.refused == {"ghost@example.com": "550 5.1.1 No such user"}
    assert recorder.received[0].rcpt_tos == ["alice@example.com"]


def test_nothing_listening_is_transient() -> None:
    with pytest.raises(TransientError) as caught:
        send(job(), config_for(free_port()))
    assert caught.value.code == "smtp_unavailable"


def test_silent_server_times_out_as_transient() -> None:
    # A listening socket that never accepts: the kernel completes the handshake, no greeting comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(TransientError) as caught:
            send(job(), config_for(silent.getsockname()[1], timeout=0.2))
    assert caught.value.code == "timeout"


def accept_gateway_login(
    server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """aiosmtpd authenticator: only gateway / right-password gets in."""
    ok = isinstance(data, LoginPassword) and data == (b"gateway", b"right-password")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


# aiosmtpd warns about AUTH without TLS; loopback in a test is exactly where that is fine.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_auth_success_and_failure_never_leaks_password() -> None:
    recorder, port = Recorder(), free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        authenticator=accept_gateway_login,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        good = config_for(port, username="gateway", password=SecretStr("right-password"))
        send(job(), good)
        assert len(recorder.received) == 1
        bad = config_for(port, username="gateway", password=SecretStr("hunter2-secret"))
        with pytest.raises(PermanentError) as caught:
            send(job(), bad)
    finally:
        controller.stop()
    assert caught.value.code == "smtp_auth_failed"
    assert "hunter2-secret" not in str(caught.value) and "hunter2-secret" not in repr(bad)


def error_locs(exc: ValidationError) -> list[tuple[int | str, ...]]:
    return [tuple(err["loc"]) for err in exc.errors()]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"text": None}, ("html",)),
        ({"text": "", "html": ""}, ("html",)),
        ({"to": ["alice@example.com", "not-an-address"]}, ("to", 1)),
        ({"to": []}, ("to",)),
        ({"cc": "a@example.com, b@example.com"}, ("cc", 0)),
        ({"from": "x@example.com\r\nBcc: victim@example.com"}, ("from",)),
        ({"subject": "hi\r\nBcc: victim@example.com"}, ("subject",)),
        ({"headers": {"X-Note": "ok\r\nBcc: victim@example.com"}}, ("headers",)),
        ({"headers": {"Bad Name": "x"}}, ("headers",)),
        ({"headers": {"subject": "override"}}, ("headers",)),
        ({"attachments": [{"filename": "a", "content_base64": "%%%"}]}, ("attachments", 0)),
        ({"attachments": [{"filename": "a"}]}, ("attachments", 0)),
    ],
)
def test_invalid_jobs_name_the_field(fields: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        job(**fields)
    assert any(got[: len(loc)] == loc for got in error_locs(caught.value)), caught.value


def test_html_only_and_from_by_name_are_accepted() -> None:
    email = EmailJob.model_validate(
        {"to": ["a@example.com"], "from_": "b@example.com", "html": "<p>x</p>"}
    )
    assert email.from_ == "b@example.com" and email.text is None
    assert EmailJob.model_validate(email.model_dump(by_alias=True)) == email


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    cert, key = (tmp_path_factory.mktemp("tls") / name for name in ("cert.pem", "key.pem"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_tls_modes_deliver_and_refuse_an_unverifiable_certificate(
    server_tls: ssl.SSLContext, mode: str
) -> None:
    recorder, port = Recorder(), free_port()
    tls_args: dict[str, Any] = (
        {"tls_context": server_tls, "require_starttls": True}
        if mode == "starttls"
        else {"ssl_context": server_tls}
    )
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **tls_args)
    controller.start()
    try:
        send(job(), config_for(port, tls=mode, validate_certs=False))
        assert len(recorder.received) == 1
        with pytest.raises(PermanentError) as caught:  # self-signed: fails the same way every time
            send(job(), config_for(port, tls=mode))
    finally:
        controller.stop()
    assert caught.value.code == "smtp_tls_failed"


# aiosmtpd offers AUTH under TLS only after its own STARTTLS, not on implicit TLS (and warns).
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_pooled_session_stays_encrypted_and_authenticated(
    server_tls: ssl.SSLContext, mode: str
) -> None:
    recorder, port = Recorder(), free_port()
    tls_args: dict[str, Any] = (
        {"tls_context": server_tls, "require_starttls": True}
        if mode == "starttls"
        else {"ssl_context": server_tls}
    )
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        authenticator=accept_gateway_login,
        auth_required=True,
        auth_require_tls=mode == "starttls",
        **tls_args,
    )
    config = config_for(
        port,
        tls=mode,
        validate_certs=False,
        username="gateway",
        password=SecretStr("right-password"),
    )

    async def three() -> None:
        pool = SmtpPool(config)
        try:
            for n in range(3):
                await send_email(job(subject=f"n{n}"), config, pool=pool)
        finally:
            await pool.aclose()

    controller.start()
    try:
        asyncio.run(three())
    finally:
        controller.stop()
    assert [r.message["Subject"] for r in recorder.received] == ["n0", "n1", "n2"]
    assert recorder.connections == 1  # one TLS handshake, one AUTH for the three


def test_non_ascii_subject_body_and_names_arrive_intact(smtp: tuple[Recorder, SmtpConfig]) -> None:
    recorder, config = smtp
    send(
        job(to="Zoë Ågren <zoe@example.com>", subject="Café ☕ report", text="naïve façade ✓"),
        config,
    )
    msg = recorder.received[0].message
    assert msg["Subject"] == "Café ☕ report"
    assert msg["To"] == "Zoë Ågren <zoe@example.com>"
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "naïve façade ✓"


def test_non_ascii_attachment_names_and_extra_headers_arrive_intact(
    smtp: tuple[Recorder, SmtpConfig],
) -> None:
    recorder, config = smtp
    data = "données ✓".encode()
    email = job(
        text="plain part",
        html="<p>html part</p>",
        headers={"X-Campaign": "été ☀", "X-Plain": "ascii"},
        attachments=[
            {
                "filename": "résumé ✓.txt",
                "content_type": "text/plain",
                "content_base64": base64.b64encode(data).decode(),
            }
        ],
    )
    send(email, config)

    msg = recorder.received[0].message
    assert msg["X-Campaign"] == "été ☀" and msg["X-Plain"] == "ascii"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and plain.get_content().strip() == "plain part"
    assert html is not None and html.get_content().strip() == "<p>html part</p>"
    [part] = list(msg.iter_attachments())
    assert part.get_filename() == "résumé ✓.txt"
    assert part.get_payload(decode=True) == data
