"""The worker's per-process clients, and httpx over aiohttp's pool as the LLM handler uses it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.embedded import free_port
from handlers.errors import PermanentError, TransientError
from handlers.llm import LlmConfig, LlmJob, call_llm
from handlers.outbound.aiohttp_transport import AiohttpTransport
from tasks import clients, loop
from tests.conftest import make_settings
from tests.handlers.llm_stub import LlmStub

JOB = LlmJob(model="m", messages=[{"role": "user", "content": "ping pong"}])  # type: ignore[list-item]


@pytest.fixture(scope="module")
def stub() -> Iterator[LlmStub]:
    with LlmStub(delay=0) as server:
        yield server


async def _with_client(fn: Any) -> Any:
    client = httpx.AsyncClient(transport=AiohttpTransport(max_connections=50), timeout=5)
    try:
        return await fn(client)
    finally:
        await client.aclose()


def test_call_llm_over_the_aiohttp_transport(stub: LlmStub) -> None:
    config = LlmConfig(base_url=stub.base_url)

    async def many(client: httpx.AsyncClient) -> list[Any]:
        return await asyncio.gather(*(call_llm(JOB, config, client) for _ in range(20)))

    results = asyncio.run(_with_client(many))
    assert {r.text for r in results} == {"ping pong"}
    assert all(r.finish_reason == "stop" and r.model == "m" for r in results)


def test_status_errors_keep_their_meaning(stub: LlmStub) -> None:
    config = LlmConfig(base_url=stub.base_url + "/nowhere")  # the stub answers 404 there

    async def call(client: httpx.AsyncClient) -> Any:
        return await call_llm(JOB, config, client)

    with pytest.raises(PermanentError) as caught:
        asyncio.run(_with_client(call))
    assert caught.value.code == "llm_rejected"


def test_a_refused_connection_is_transient() -> None:
    config = LlmConfig(base_url=f"http://127.0.0.1:{free_port()}")

    async def call(client: httpx.AsyncClient) -> Any:
        return await call_llm(JOB, config, client)

    with pytest.raises(TransientError) as caught:
        asyncio.run(_with_client(call))
    assert caught.value.code == "llm_unavailable"


def test_a_slow_answer_is_a_transient_timeout() -> None:
    with LlmStub(delay=2) as slow:
        config = LlmConfig(base_url=slow.base_url, timeout=0.2)

        async def call(client: httpx.AsyncClient) -> Any:
            return await call_llm(JOB, config, client)

        with pytest.raises(TransientError) as caught:
            asyncio.run(_with_client(call))
    assert caught.value.code == "timeout"


def test_a_streamed_body_is_read_through_httpx(stub: LlmStub) -> None:
    async def get(client: httpx.AsyncClient) -> tuple[int, bytes, str]:
        async with client.stream("GET", stub.base_url + "/missing") as response:
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
            return response.status_code, body, response.headers["content-type"]

    status, body, ctype = asyncio.run(_with_client(get))
    assert status == 404
    assert b"not found" in body
    assert ctype == "application/json"


def test_clients_are_built_once_per_process_on_the_process_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = make_settings("redis://127.0.0.1:1/0", "unused:", data_dir=tmp_path)
    monkeypatch.setattr(clients, "get_settings", lambda: settings)
    monkeypatch.setattr(clients, "_clients", None)
    first = clients.get_clients()
    assert clients.get_clients() is first
    assert first.files.root == (tmp_path / "files").resolve()

    async def same_loop() -> bool:
        return asyncio.get_running_loop() is loop.get_loop()

    assert loop.run(same_loop())
    monkeypatch.setattr(clients, "_clients", (-1, first))  # as if this were a forked child
    assert clients.get_clients() is not first
