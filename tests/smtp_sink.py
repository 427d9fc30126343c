"""A recording SMTP server handler (aiosmtpd) for tests: what arrived, over how many sessions.

Replies can be scripted per recipient (``rcpt_replies``) or for DATA (``data_reply``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Recorder:
    """aiosmtpd handler: stores envelopes; replies can be scripted per recipient or for DATA."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    servers: list[SmtpServer] = field(default_factory=list)  # aiosmtpd's, one per connection
    quits: int = 0  # sessions the client ended with QUIT
    port: int = 0  # where it listens, for fixtures that share it

    @property
    def connections(self) -> int:
        """Connections that sent EHLO."""
        return len(self.servers)

    async def handle_EHLO(
        self, server: SmtpServer, session: Session, envelope: Envelope, hostname: str, lines: Any
    ) -> list[str]:
        session.host_name = hostname  # this hook's form leaves that to the handler
        if not any(known is server for known in self.servers):  # STARTTLS: EHLO again
            self.servers.append(server)
        return list(lines)

    async def handle_RCPT(
        self, server: SmtpServer, session: Session, envelope: Envelope, address: str, _: Any
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        assert isinstance(envelope.content, bytes) and envelope.mail_from
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    async def handle_QUIT(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    def to(self, address: str) -> EmailMessage | None:
        """The last message whose To header names ``address``."""
        found = [r.message for r in self.received if address in str(r.message["To"])]
        return found[-1] if found else None
