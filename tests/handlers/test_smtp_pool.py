"""SMTP sessions reused across emails, against a real aiosmtpd relay on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from handlers.email import send_email
from handlers.email_models import EmailResult, SmtpConfig
from handlers.errors import PermanentError, TransientError
from handlers.smtp_pool import SmtpPool
from tests.handlers.test_email import config_for, free_port, job
from tests.smtp_sink import Recorder


@dataclass
class Relay(Recorder):
    """A Recorder that can drop a connection or give other replies at a chosen command."""

    mails: int = 0  # MAIL commands seen
    datas: int = 0  # ends of DATA seen
    quits: int = 0
    mail_reply: str | None = None  # answered once, to the next MAIL
    drop_at_mail: int = 0  # the next N MAILs get no answer: the connection is closed instead
    drop_at_data: bool = False  # close at the end of DATA without answering (message taken)
    rset_reply: str | None = None

    async def handle_MAIL(
        self, server: SmtpServer, session: Session, envelope: Envelope, address: str, _: Any
    ) -> str:
        self.mails += 1
        if self.drop_at_mail:
            self.drop_at_mail -= 1
            server.transport.close()
            return "421 not sent: the connection is closed"
        if self.mail_reply:
            reply, self.mail_reply = self.mail_reply, None
            return reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.datas += 1
        if self.drop_at_data:
            server.transport.close()
            return "250 not sent: the connection is closed"
        return await super().handle_DATA(server, session, envelope)

    async def handle_RSET(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        return self.rset_reply or "250 OK"

    async def handle_QUIT(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, Controller, SmtpConfig]]:
    handler, port = Relay(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, controller, config_for(port)
    finally:
        controller.stop()


Scenario = Callable[[SmtpPool, SmtpConfig], Awaitable[None]]


def run(config: SmtpConfig, scenario: Scenario, **pool_args: Any) -> None:
    """Run ``scenario`` with a pool made on its loop, closed after."""

    async def main() -> None:
        pool = SmtpPool(config, **pool_args)
        try:
            await scenario(pool, config)
        finally:
            await pool.aclose()

    asyncio.run(main())


def send(pool: SmtpPool, config: SmtpConfig, subject: str, **fields: Any) -> Awaitable[EmailResult]:
    return send_email(job(subject=subject, text=f"body of {subject}", **fields), config, pool=pool)


def subjects(relay: Relay) -> list[str]:
    return [r.message["Subject"] for r in relay.received]


def test_without_a_pool_each_email_has_its_own_session_closed_with_quit(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay
    for n in range(2):
        asyncio.run(send_email(job(subject=f"n{n}"), config))
    assert subjects(handler) == ["n0", "n1"]
    assert handler.connections == handler.quits == 2


def test_messages_one_after_another_share_one_connection(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        for n in range(5):
            result = await send(pool, config, f"n{n}", to=["a@example.com", "b@example.com"])
            assert result.accepted == ["a@example.com", "b@example.com"]

    run(config, scenario)
    assert handler.connections == handler.quits == 1  # the pool's close sends QUIT
    assert subjects(handler) == ["n0", "n1", "n2", "n3", "n4"]
    for n, got in enumerate(handler.received):
        assert got.rcpt_tos == ["a@example.com", "b@example.com"]
        body = got.message.get_body(("plain",))
        assert body is not None and body.get_content().strip() == f"body of n{n}"


def test_concurrent_sends_each_arrive_once_and_idle_sessions_serve_the_next_batch(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay
    opened: list[int] = []

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        await asyncio.gather(*(send(pool, config, f"a{n}") for n in range(20)))
        opened.append(handler.connections)
        await asyncio.gather(*(send(pool, config, f"b{n}") for n in range(20)))

    run(config, scenario)
    assert opened[0] <= 20
    assert handler.connections == opened[0]  # the second batch opened none
    assert sorted(subjects(handler)) == sorted(f"{b}{n}" for b in "ab" for n in range(20))


def test_relay_closing_an_idle_session_is_not_an_error(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, controller, config = relay

    async def close_connections() -> None:
        for server in handler.servers:
            server.transport.close()

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        await send(pool, config, "first")
        # Blocking this loop until the relay has closed: the pool cannot have seen it yet, so
        # the next send finds out on its first command and retries on a new connection.
        asyncio.run_coroutine_threadsafe(close_connections(), controller.loop).result(timeout=5)
        await send(pool, config, "second")

    run(config, scenario)
    assert subjects(handler) == ["first", "second"]
    assert handler.connections == 2 and handler.mails == 2


def test_421_to_mail_on_a_reused_session_is_retried_on_a_new_one(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        await send(pool, config, "first")
        handler.mail_reply = "421 4.4.2 Idle timeout, closing"
        await send(pool, config, "second")

    run(config, scenario)
    assert subjects(handler) == ["first", "second"]
    assert handler.connections == 2


def test_a_new_session_dropped_at_mail_is_not_retried(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay
    handler.drop_at_mail = 2

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        with pytest.raises(TransientError) as caught:
            await send(pool, config, "lost")
        assert caught.value.code == "smtp_unavailable"

    run(config, scenario)
    assert handler.mails == 1 and handler.received == []


def test_a_drop_after_mail_was_accepted_is_not_retried(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        await send(pool, config, "first")
        handler.drop_at_data = True  # the relay may have taken it: sending again could duplicate
        with pytest.raises(TransientError) as caught:
            await send(pool, config, "second")
        assert caught.value.code == "smtp_unavailable"

    run(config, scenario)
    assert handler.mails == 2 and handler.datas == 2


def test_all_recipients_refused_leaves_the_session_usable(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay
    handler.rcpt_replies = {"ghost@example.com": "550 5.1.1 No such user"}

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        with pytest.raises(PermanentError) as caught:
            await send(pool, config, "refused", to="ghost@example.com")
        assert caught.value.code == "recipients_refused"
        await send(pool, config, "next")

    run(config, scenario)
    assert subjects(handler) == ["next"]
    assert handler.connections == 1  # reset with RSET and reused


def test_451_to_data_is_transient_and_the_session_serves_the_next(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        handler.data_reply = "451 4.3.0 Try again later"
        with pytest.raises(TransientError) as caught:
            await send(pool, config, "deferred")
        assert caught.value.code == "smtp_transient"
        handler.data_reply = None
        await send(pool, config, "next")

    run(config, scenario)
    assert subjects(handler) == ["next"]
    assert handler.connections == 1


def test_a_refused_rset_closes_the_session(relay: tuple[Relay, Controller, SmtpConfig]) -> None:
    handler, _, config = relay
    handler.rcpt_replies = {"ghost@example.com": "550 5.1.1 No such user"}
    handler.rset_reply = "502 5.5.1 RSET not implemented"

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        with pytest.raises(PermanentError):
            await send(pool, config, "refused", to="ghost@example.com")
        await send(pool, config, "next")

    run(config, scenario)
    assert subjects(handler) == ["next"]
    assert handler.connections == 2


@pytest.mark.parametrize(
    ("pool_args", "connections"),
    [
        ({"max_messages": 2}, 3),  # 5 messages: 2 + 2 + 1
        ({"idle_timeout": 0.0}, 5),  # never kept idle
    ],
)
def test_sessions_are_retired_after_max_messages_or_idle_timeout(
    relay: tuple[Relay, Controller, SmtpConfig], pool_args: dict[str, Any], connections: int
) -> None:
    handler, _, config = relay

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        for n in range(5):
            await send(pool, config, f"n{n}")

    run(config, scenario, **pool_args)
    assert len(handler.received) == 5
    assert handler.connections == handler.quits == connections  # retired politely, with QUIT


def test_idle_sessions_beyond_max_idle_are_closed(
    relay: tuple[Relay, Controller, SmtpConfig],
) -> None:
    handler, _, config = relay

    async def scenario(pool: SmtpPool, config: SmtpConfig) -> None:
        await asyncio.gather(*(send(pool, config, f"a{n}") for n in range(5)))  # 5 opened
        await asyncio.gather(*(send(pool, config, f"b{n}") for n in range(5)))  # 2 kept: 3 more

    run(config, scenario, max_idle=2)
    assert len(handler.received) == 10
    assert handler.connections == 8
