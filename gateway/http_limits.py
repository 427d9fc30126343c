"""The API's HTTP/1.1 protocol: uvicorn's httptools protocol with a bound on the request head.

uvicorn bounds nothing in httptools mode (a 2 MB header block was read and answered 200), so a
client could make the process buffer headers without end. Here the request line and headers
together may take MAX_HEADER_BYTES; beyond, the answer is 431 in the one error shape and the
connection closes. The head is counted twice: exactly, header by header as the parser hands them
over, and roughly, by the bytes received while the head is incomplete (so one endless header is
cut off after at most one read beyond the limit, not when it ends).

Relies on uvicorn's private HttpToolsProtocol (its parser callbacks, data_received and
send_400_response) of uvicorn 0.x, whose major pyproject.toml should pin (<1);
tests/gateway/test_header_limits.py runs it through a real `gateway api` process, so an upgrade
that changes them fails there.
"""

from __future__ import annotations

import json
from functools import lru_cache

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.settings import get_settings


class HeadTooLarge(Exception):
    """The request line and headers passed MAX_HEADER_BYTES."""


@lru_cache
def max_head_bytes() -> int:
    """MAX_HEADER_BYTES of this process."""
    return get_settings().max_header_bytes


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 to a request head over MAX_HEADER_BYTES."""

    _head_bytes = 0  # received while the head is incomplete (rough)
    _exact = 0  # of the request line and headers parsed so far
    _head_done = False
    _too_large = False

    def data_received(self, data: bytes) -> None:
        if not self._head_done:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_done or self._head_bytes <= max_head_bytes():
            return
        if not self.transport.is_closing():
            self._too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._exact, self._head_done = 0, 0, False

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._exact += size
        if self._exact > max_head_bytes():
            self._too_large = True
            raise HeadTooLarge  # httptools stops parsing; uvicorn then calls send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it can't parse; 431 when the head was too large."""
        if not self._too_large:
            super().send_400_response(msg)
            return
        limit = max_head_bytes()
        body = json.dumps(
            {
                "code": "headers_too_large",
                "detail": f"the request line and headers exceed {limit} bytes",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
        )
        self.transport.close()
