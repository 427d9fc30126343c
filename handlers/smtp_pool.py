"""Open SMTP sessions kept per process, each lent to one message at a time, as MTAs reuse them.

A message borrows a session for its transaction (MAIL, RCPT..., DATA) and gives it back:

- borrow the most recently returned idle session, else open one (connect, STARTTLS, AUTH as
  configured; EHLO on first use). Concurrency bounds the sessions open; only idle ones are capped.
  Last in, first out: after a burst the extra sessions age out instead of all being kept warm.
- a session goes back idle after a transaction that ended on a reply: success, or an error reply
  followed by a successful RSET. Anything else (disconnect, timeout, failed RSET, cancellation)
  closes it.
- idle longer than ``idle_timeout``, ``max_messages`` sent, or more than ``max_idle`` idle: the
  session is retired with a QUIT.
- relays drop idle sessions without a word: if a reused session fails before MAIL FROM was
  accepted (disconnected, or 421 "closing"), nothing was sent, so the message is retried once
  on a new session at once. Later failures are the caller's to classify and retry.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from email.message import Message
from typing import Literal

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPStatus,
)
from aiosmtplib.typing import Default

from handlers.email_models import SmtpConfig

IDLE_TIMEOUT_SECONDS = 30.0  # relays drop idle sessions (Postfix after 300 s, some after 30-60 s)
MAX_MESSAGES = 100  # per session: bounds how long one session lives
# Workers pass their concurrency (SMTP_MAX_IDLE_CONNECTIONS): emails that start together end
# together, and a cap below the wave closes sessions the next wave has to open again.
MAX_IDLE = 100
QUIT_TIMEOUT_SECONDS = 5.0

_fqdn: str | None = None


async def _local_hostname() -> str:
    # aiosmtplib looks the FQDN up in a thread for every connection unless it is given one
    global _fqdn
    if _fqdn is None:
        _fqdn = await asyncio.to_thread(socket.getfqdn)
    return _fqdn


class _Session(SMTP):
    """An SMTP client that notes how far its current transaction got."""

    mail_accepted = False  # MAIL FROM answered 250: from here a failure may follow a delivery
    reset = False  # RSET answered 250 after an error reply: the envelope is clean again
    messages = 0
    idle_since = 0.0

    async def mail(
        self,
        sender: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109 (the base's)
    ) -> SMTPResponse:
        response = await super().mail(sender, options=options, encoding=encoding, timeout=timeout)
        self.mail_accepted = True
        return response

    async def rset(
        self,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109 (the base's)
    ) -> SMTPResponse:
        # sendmail sends RSET after an error reply and swallows its failure: note if it took
        response = await super().rset(timeout=timeout)
        self.reset = True
        return response


class SmtpPool:
    """One process's open sessions to the relay of ``config``; build on the loop that uses it."""

    def __init__(
        self,
        config: SmtpConfig,
        *,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_messages: int = MAX_MESSAGES,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.config = config
        self.idle_timeout = idle_timeout
        self.max_messages = max_messages
        self.max_idle = max_idle
        self._idle: deque[_Session] = deque()  # oldest on the left
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def send(
        self, message: Message, *, sender: str, recipients: Sequence[str]
    ) -> dict[str, SMTPResponse]:
        """Send one message; return the refused recipients' replies. Raises aiosmtplib's errors."""
        session = self._borrow()
        if session is not None:
            try:
                return await self._transact(session, message, sender, recipients)
            except (SMTPResponseException, ConnectionError) as exc:
                dropped = (
                    isinstance(exc, ConnectionError) or exc.code == SMTPStatus.domain_unavailable
                )
                if session.mail_accepted or not dropped:
                    raise
                # The relay had closed the idle session before it took MAIL: nothing was sent.
        return await self._transact(await self._open(), message, sender, recipients)

    async def aclose(self) -> None:
        """QUIT the idle sessions; sessions lent out are closed when given back."""
        self._closed = True
        while self._idle:
            self._retire(self._idle.pop())
        if self._quitting:
            await asyncio.gather(*self._quitting)

    async def _open(self) -> _Session:
        config = self.config
        session = _Session(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            local_hostname=config.local_hostname or await _local_hostname(),
            timeout=config.timeout,
            use_tls=config.tls == "tls",
            start_tls=config.tls == "starttls",
            validate_certs=config.validate_certs,
        )
        await session.connect()
        return session

    async def _transact(
        self, session: _Session, message: Message, sender: str, recipients: Sequence[str]
    ) -> dict[str, SMTPResponse]:
        session.mail_accepted = session.reset = False
        reusable = False
        try:
            # send_message flattens as aiosmtplib.send does, choosing SMTPUTF8 / 8BITMIME
            refused, _ = await session.send_message(message, sender=sender, recipients=recipients)
            reusable = True
            return refused
        except (SMTPResponseException, SMTPRecipientsRefused):
            reusable = session.reset
            raise
        finally:
            self._give_back(session, reusable=reusable)

    def _borrow(self) -> _Session | None:
        # No await from check to pop: sessions are shared by coroutines of one loop without a lock.
        while self._idle:
            session = self._idle.pop()
            if session.is_connected and time.monotonic() - session.idle_since < self.idle_timeout:
                return session
            self._retire(session)
        return None

    def _give_back(self, session: _Session, *, reusable: bool) -> None:
        session.messages += 1
        if not (reusable and session.is_connected):
            session.close()  # mid-command or out of step with the server: never reuse
            return
        if self._closed or session.messages >= self.max_messages:
            self._retire(session)
            return
        now = time.monotonic()
        session.idle_since = now
        self._idle.append(session)
        idle = self._idle
        while idle and (len(idle) > self.max_idle or now - idle[0].idle_since >= self.idle_timeout):
            self._retire(idle.popleft())

    def _retire(self, session: _Session) -> None:
        if not session.is_connected:
            session.close()
            return
        task = asyncio.get_running_loop().create_task(_quit(session))
        self._quitting.add(task)  # a strong reference until it is done
        task.add_done_callback(self._quitting.discard)


async def _quit(session: _Session) -> None:
    try:
        await session.quit(timeout=QUIT_TIMEOUT_SECONDS)
    except (SMTPException, OSError):
        pass  # the session is being dropped anyway
    finally:
        session.close()
