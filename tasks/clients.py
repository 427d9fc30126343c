"""The clients a worker process shares across all its tasks: built once, on the process loop.

Built lazily on first use and again in a forked child (a prefork `files` worker's children must not
share their parent's sockets). They are created inside a coroutine on the loop of tasks/loop.py,
the loop every async handler of the process runs on, so connection pools never cross loops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.configs import llm_config, outbound_policy, smtp_config
from core.settings import Settings, get_settings
from handlers.email_models import SmtpConfig
from handlers.errors import PermanentError
from handlers.files import FileStore
from handlers.llm import LlmConfig
from handlers.outbound.aiohttp_transport import AiohttpTransport
from handlers.outbound.client import build_client
from handlers.outbound.transfer import fetch_to_file, request_limited
from handlers.smtp_pool import SmtpPool
from tasks import loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerClients:
    """Everything a handler may be handed: configs, the shared HTTP clients, the file store."""

    settings: Settings
    smtp: SmtpConfig
    # SMTP sessions kept open between emails, opened on first use (handlers/smtp_pool.py)
    smtp_pool: SmtpPool
    llm: LlmConfig
    # The LLM provider is operator-configured (often on a private address: vLLM, Ollama), so it
    # is not put through the private-address guard; everything a caller names goes via `outbound`.
    llm_http: httpx.AsyncClient
    outbound: httpx.AsyncClient
    files: FileStore

    async def fetch_bytes(self, url: str, max_bytes: int) -> bytes:
        """GET a caller-named URL through the guarded client; at most ``max_bytes`` + 1 are read."""
        # One byte over the limit is read so the caller can tell "exactly max" from "too big".
        response = await request_limited(self.outbound, "GET", url, max_bytes=max_bytes + 1)
        response.raise_for_status("attachment URL")
        if response.truncated:
            raise PermanentError(f"the URL's body is over {max_bytes} bytes", code="too_large")
        return response.body

    async def aclose(self) -> None:
        """Close the HTTP pools and end the SMTP sessions (QUIT)."""
        await asyncio.gather(
            self.llm_http.aclose(), self.outbound.aclose(), self.smtp_pool.aclose(),
            return_exceptions=True,
        )  # fmt: skip

    def fetch_to_file(self, url: str, dest: Path, max_bytes: int) -> int:
        """Stream a caller-named URL to ``dest`` through the guarded client, from a sync task."""
        return loop.run(fetch_to_file(self.outbound, url, dest, max_bytes=max_bytes))


def llm_client(settings: Settings) -> httpx.AsyncClient:
    """One keep-alive pool for every LLM call of the process; call inside the process loop.

    HTTP/1.1 holds one request per connection, so the pool holds as many connections as calls in
    flight (1000+ on one `llm` worker) and keeps them alive between jobs. The pool is aiohttp's:
    httpcore's costs grow with the pool's size (see handlers/outbound/aiohttp_transport.py).
    """
    transport = AiohttpTransport(max_connections=settings.llm_max_connections)
    return httpx.AsyncClient(transport=transport, timeout=settings.llm_timeout_seconds)


async def _build(settings: Settings) -> WorkerClients:
    # A coroutine so the clients are made on (and bound to) the process loop.
    smtp = smtp_config(settings)
    return WorkerClients(
        settings=settings,
        smtp=smtp,
        smtp_pool=SmtpPool(smtp, max_idle=settings.smtp_max_idle_connections),
        llm=llm_config(settings),
        llm_http=llm_client(settings),
        outbound=build_client(outbound_policy(settings)),
        files=FileStore(settings.files_dir),
    )


_clients: tuple[int, WorkerClients] | None = None


async def _get_or_build() -> WorkerClients:
    # Runs on the loop thread without awaiting between the check and the assignment, so the
    # clients are built once without a thread lock: a lock held across `loop.run` would deadlock
    # the loop pool, whose tasks are greenlets on that one thread.
    global _clients
    if _clients is None or _clients[0] != os.getpid():
        _clients = (os.getpid(), await _build(get_settings()))
    return _clients[1]


def close_clients() -> None:
    """Close this process's clients if it built any (worker shutdown); not from the loop."""
    global _clients
    clients, _clients = _clients, None
    if clients is None or clients[0] != os.getpid():
        return
    try:
        loop.run(clients[1].aclose(), timeout=10)
    except Exception as exc:  # shutting down regardless; say why the goodbye was cut short
        log.warning("closing the worker's clients failed: %r", exc)


def get_clients() -> WorkerClients:
    """This process's clients, built on first use and again after a fork; not from the loop."""
    clients = _clients
    if clients is not None and clients[0] == os.getpid():
        return clients[1]
    return loop.run(_get_or_build())
