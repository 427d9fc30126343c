"""A tiny OpenAI-compatible chat completions server for tests and benchmarks.

POST /v1/chat/completions waits ``delay`` seconds, then echoes the last user message.
In-process: ``with LlmStub(delay=0.5) as stub: ... stub.base_url ...``.
Standalone: ``python tests/handlers/llm_stub.py --port 8099 --delay 2.0``
(``LLM_STUB_DELAY`` sets the default delay). A raw ASGI app under uvicorn keeps each
waiting request a coroutine, so thousands of concurrent connections stay cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _default_delay() -> float:
    return float(os.environ.get("LLM_STUB_DELAY", "0"))


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content", "")
            if isinstance(content, list):  # content parts: keep the text ones
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content)
    return ""


class StubApp:
    """The ASGI app: one route, a fixed delay, an echoing completion."""

    def __init__(self, delay: float, hold_until: int = 0) -> None:
        self.delay = delay
        # with hold_until, no request is answered before that many have arrived: a client that
        # cannot hold them all in flight at once never gets an answer
        self.hold_until = hold_until
        self.requests = 0  # read by tests; only touched on the server's event loop
        self._ids = itertools.count(1)
        self._all_in: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await _respond(send, 404, {"error": {"message": "not found"}})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        if self.hold_until:
            if self._all_in is None:
                self._all_in = asyncio.Event()
            if self.requests >= self.hold_until:
                self._all_in.set()
            await self._all_in.wait()
        try:
            body = json.loads(raw)
            text = _last_user_text(body["messages"])
        except (ValueError, KeyError, TypeError, AttributeError):
            await _respond(send, 400, {"error": {"message": "invalid request body"}})
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        prompt, completion = sum(len(str(m)) // 4 for m in body["messages"]), len(text.split())
        await _respond(
            send,
            200,
            {
                "id": f"chatcmpl-stub-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "stub"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
        )


async def _respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class LlmStub:
    """Runs StubApp under uvicorn in a background thread on 127.0.0.1."""

    def __init__(self, delay: float | None = None, port: int = 0, hold_until: int = 0) -> None:
        self.app = StubApp(_default_delay() if delay is None else delay, hold_until)
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The URL to put in LlmConfig.base_url."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> int:
        """Start serving and return the port; connections queue in the backlog until ready."""
        # Binding here, not in uvicorn, means the port is known and connectable at once,
        # so callers never poll or sleep waiting for the server thread.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        sock.listen(4096)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            backlog=4096,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="llm-stub", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Ask uvicorn to shut down and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> LlmStub:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """Serve the stub in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay", type=float, default=_default_delay())
    args = parser.parse_args()
    uvicorn.run(
        StubApp(args.delay),
        host=args.host,
        port=args.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
