"""`gateway dev`'s mail catcher: a real SMTP server (aiosmtpd) on loopback that keeps every message.

Started by `gateway dev` when SMTP_HOST is unset, so the email worker has a server to talk to on a
fresh machine. Each message is written to ``<DATA_DIR>/mail/<time>-<n>.eml`` as received (open it
with any mail client) and listed in the log: path, recipients, subject. Nothing is relayed.
"""

from __future__ import annotations

import itertools
import time
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.embedded import free_port


class SaveToDisk:
    """aiosmtpd handler: every accepted message becomes one .eml file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._numbers = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Write the message as received, say where it went, accept it."""
        content = envelope.original_content or b""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = self.directory / f"{stamp}-{next(self._numbers):04d}.eml"
        # the envelope recipients (bcc included), which the headers alone do not show
        envelope_lines = f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        path.write_bytes(envelope_lines + content)
        headers = BytesHeaderParser(policy=default_policy).parsebytes(content)
        print(
            f"gateway dev: mail to {', '.join(envelope.rcpt_tos)} "
            f"subject {str(headers.get('Subject', ''))!r} saved as {path}",
            flush=True,
        )
        return "250 Message accepted for delivery"


class MailCatcher:
    """The SMTP server, on its own thread, listening on 127.0.0.1."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.directory = data_dir / "mail"
        self.port = port or free_port()
        self._controller: Controller | None = None

    def start(self) -> MailCatcher:
        """Listen; returns once the server answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # loopback only: the catcher accepts mail from anyone who can connect
        self._controller = Controller(
            SaveToDisk(self.directory), hostname="127.0.0.1", port=self.port
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
