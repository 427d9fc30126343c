"""Streaming multipart/form-data: the `file` part's bytes as they arrive, never the whole body.

Starlette's ``request.form()`` spools every part to a temp file before the route sees it, so it can
neither refuse an oversized upload while it streams nor write it where it will live. Here
python-multipart's push parser (the one Starlette uses underneath) is fed the request stream chunk
by chunk, and the file part's data is handed on as it is parsed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import ApiError

FILE_FIELD = "file"
# Room for boundaries, part headers and small text fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
_MISSING_FILE = {"loc": ["body", FILE_FIELD], "msg": "Field required", "type": "missing"}


def multipart_boundary(request: Request) -> bytes:
    """The boundary of a multipart/form-data request; 415 for any other body, 400 without one."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise ApiError(
            "unsupported_media_type", "send the file as multipart/form-data (field 'file')"
        )
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise ApiError("invalid_multipart", "the multipart Content-Type has no boundary")
    return boundary


def too_large(limit: int) -> ApiError:
    """The 413 for an upload over ``limit`` bytes."""
    return ApiError("payload_too_large", f"the file exceeds {limit} bytes")


def check_declared_length(request: Request, limit: int) -> None:
    """413 up front when Content-Length already says the body cannot fit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise ApiError("bad_content_length", "Content-Length is not a number")
    if int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large(limit)


@dataclass
class _Parser:
    """Callback state of the push parser: the current part's headers and the file's data."""

    boundary: bytes
    filename: str | None = None
    content_type: str = "application/octet-stream"
    in_file: bool = False
    file_done: bool = False
    pending: deque[bytes] = field(default_factory=deque)
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _headers: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._parser = MultipartParser(
            self.boundary,
            {
                "on_part_begin": self._headers.clear,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ApiError("invalid_multipart", f"malformed multipart body: {exc}") from None

    def _header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if (
            self.filename is None
            and disposition == b"form-data"
            and options.get(b"name") == FILE_FIELD.encode()
            and b"filename" in options
        ):
            self.filename = options[b"filename"].decode("utf-8", errors="replace")
            declared, _ = parse_options_header(self._headers.get(b"content-type", b""))
            if declared.count(b"/") == 1 and len(declared) <= 255:
                self.content_type = declared.decode("ascii", errors="replace")
            self.in_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file and end > start:
            self.pending.append(data[start:end])

    def _part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.file_done = True


class FileUpload:
    """The `file` part of a streamed multipart body: its name, declared type and data."""

    def __init__(self, request: Request, boundary: bytes, max_file_bytes: int) -> None:
        self._stream = request.stream().__aiter__()
        self._parser = _Parser(boundary)
        self._max_file_bytes = max_file_bytes
        self._body_limit = max_file_bytes + MULTIPART_OVERHEAD
        self._received = 0

    @property
    def filename(self) -> str:
        """The client's file name (metadata only; FileStore cleans it)."""
        return self._parser.filename or "file"

    @property
    def content_type(self) -> str:
        """The part's declared media type, or application/octet-stream."""
        return self._parser.content_type

    async def start(self) -> FileUpload:
        """Read until the file part's headers are in; 422 naming the field when there is none."""
        while self._parser.filename is None:
            if not await self._feed():
                raise ApiError(
                    "validation_error",
                    f"{FILE_FIELD}: a file part is required",
                    errors=[_MISSING_FILE],
                )
        return self

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive; afterwards the rest of the body is read and checked."""
        parser = self._parser
        while True:
            while parser.pending:
                yield parser.pending.popleft()
            if parser.file_done:
                break
            if not await self._feed():
                raise ApiError("invalid_multipart", "the body ended inside the file part")
        # Reading to the end answers a client that is still sending, and checks the total size.
        while await self._feed():
            parser.pending.clear()

    async def _feed(self) -> bool:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            return False
        self._received += len(chunk)
        if self._received > self._body_limit:
            raise too_large(self._max_file_bytes)
        self._parser.write(chunk)
        return True
