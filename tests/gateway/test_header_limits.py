"""The request head limit, through a real `gateway api` process (uvicorn + httptools): a request
line and headers over MAX_HEADER_BYTES get 431 in the error shape at once, never a hang or a 500,
and bodies are not counted. Also the contract test for gateway/http_limits.py's use of uvicorn.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import API_KEY

LIMIT = 32 * 1024


def exchange(base: str, head: bytes, body: bytes = b"", chunk: int = 65536) -> tuple[int, bytes]:
    """Send one raw request (in chunks, stopping when the server hangs up); its status and body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        data = head + body
        try:
            for at in range(0, len(data), chunk):
                sock.sendall(data[at : at + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        answer = b""
        try:
            while part := sock.recv(65536):
                answer += part
                if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                    break
        except ConnectionResetError:
            pass
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def request_head(path: str = "/healthz", headers: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"


@pytest.mark.parametrize(
    "head",
    [
        request_head(headers=b"X-Big: " + b"a" * (LIMIT + 10) + b"\r\n"),
        request_head(headers=b"".join(b"X-H%d: %b\r\n" % (i, b"b" * 90) for i in range(400))),
        request_head(path="/healthz?" + "q" * (LIMIT + 10)),
        request_head(headers=b"X-Endless: " + b"a" * 5_000_000 + b"\r\n"),
    ],
    ids=["one-header", "many-headers", "long-url", "5MB-header"],
)
def test_a_request_head_over_the_limit_is_431_at_once(live_api: str, head: bytes) -> None:
    started = time.monotonic()
    status, body = exchange(live_api, head)

    assert status == 431
    assert json.loads(body) == {
        "code": "headers_too_large",
        "detail": f"the request line and headers exceed {LIMIT} bytes",
    }
    assert time.monotonic() - started < 5


def test_a_head_within_the_limit_and_a_large_body_pass(live_api: str) -> None:
    headers = b"X-Pad: " + b"a" * (LIMIT - 2000) + b"\r\n"
    assert exchange(live_api, request_head(headers=headers))[0] == 200
    body = json.dumps({"message": "m" * 900_000}).encode()
    head = (
        b"POST /v1/jobs/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (API_KEY.encode(), len(body))
    )
    status, answer = exchange(live_api, head, body)
    assert status == 202, answer
