"""`gateway dev`'s mail catcher: a real SMTP server on loopback that saves each message as .eml."""

from __future__ import annotations

import smtplib
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.mail_catcher import MailCatcher


def test_each_message_is_saved_with_its_envelope_and_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catcher = MailCatcher(tmp_path).start()
    try:
        message = EmailMessage()
        message["From"] = "gateway@localhost"
        message["To"] = "a@example.com"
        message["Subject"] = "Hi"
        message.set_content("Hello")
        with smtplib.SMTP("127.0.0.1", catcher.port, timeout=10) as smtp:
            smtp.send_message(message, to_addrs=["a@example.com", "hidden@example.com"])
    finally:
        catcher.stop()
    (saved,) = (tmp_path / "mail").glob("*.eml")
    parsed = message_from_bytes(saved.read_bytes(), policy=policy.default)
    assert parsed["Subject"] == "Hi" and parsed.get_content().strip() == "Hello"
    assert parsed["X-Envelope-To"] == "a@example.com, hidden@example.com"  # bcc shows here only
    line = capsys.readouterr().out
    assert "mail to a@example.com, hidden@example.com subject 'Hi'" in line and str(saved) in line
