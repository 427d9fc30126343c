"""Files on local disk: streamed in, hashed on the way, committed by atomic rename."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel

from handlers.errors import PermanentError

# Ids are ours (new_id), so anything else is refused before it reaches the filesystem.
FILE_ID_PATTERN = r"^f_[A-Za-z0-9_-]{16,64}$"
_ID_RE = re.compile(FILE_ID_PATTERN)
_TMP_PREFIX = ".tmp-"
# Big enough that a thread hop per chunk costs little, small enough to keep memory flat.
_ASYNC_FLUSH_BYTES = 1 << 20


class StoredFile(BaseModel):
    """Metadata of one stored file, kept in a JSON sidecar next to its bytes."""

    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime


def _clean_filename(name: str) -> str:
    # The name is metadata for people; never a path, but strip path parts and controls anyway.
    base = re.split(r"[/\\]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:255] or "file"


class FileWriter:
    """A temp file in the store that hashes and counts as it is written; commit() publishes it.

    It has no fileno() on purpose: Pillow and others then write through write(), so every byte is
    hashed and counted.
    """

    def __init__(self, store: FileStore, *, max_bytes: int, filename: str, content_type: str):
        self._store = store
        self._max_bytes = max_bytes
        self._filename = filename
        self._content_type = content_type
        self._hash = hashlib.sha256()
        self.size = 0
        fd, name = tempfile.mkstemp(dir=store.root, prefix=_TMP_PREFIX)
        self._tmp = Path(name)
        self._fp = os.fdopen(fd, "wb")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; raise PermanentError(too_large) and discard everything past max_bytes."""
        n = len(data)
        if self.size + n > self._max_bytes:
            self.abort()
            raise PermanentError(
                f"file is larger than the limit of {self._max_bytes} bytes", code="too_large"
            )
        self._fp.write(data)
        self._hash.update(data)
        self.size += n
        return n

    def commit(self) -> StoredFile:
        """Flush to disk and publish the file under a new id."""
        self._fp.flush()
        os.fsync(self._fp.fileno())
        self._fp.close()
        return self._store._publish(
            self._tmp, self.size, self._hash.hexdigest(), self._filename, self._content_type
        )

    def abort(self) -> None:
        """Close and delete the partial file; safe to call more than once."""
        self._fp.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Not committed (an error, or a caller that forgot): leave no temp file behind.
        self.abort()


class FileStore:
    """A directory of files named by random ids, each with a JSON metadata sidecar."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    @staticmethod
    def new_id() -> str:
        """Return a fresh url-safe random file id."""
        return "f_" + secrets.token_urlsafe(16)

    @staticmethod
    def is_valid_id(file_id: str) -> bool:
        """Say whether file_id has the shape new_id() produces (so it cannot name another path)."""
        return _ID_RE.fullmatch(file_id) is not None

    def path(self, file_id: str) -> Path:
        """Return where a file's bytes live; PermanentError(invalid_file_id) for a foreign id."""
        if not self.is_valid_id(file_id):
            raise PermanentError(f"invalid file id {file_id[:80]!r}", code="invalid_file_id")
        return self.root / file_id

    def _meta_path(self, file_id: str) -> Path:
        return self.path(file_id).with_name(file_id + ".json")

    def _publish(
        self, tmp: Path, size: int, sha256: str, filename: str, content_type: str
    ) -> StoredFile:
        # Bytes first, sidecar last: get() only sees a file once both are complete.
        file_id = self.new_id()
        os.replace(tmp, self.path(file_id))
        meta = StoredFile(
            id=file_id,
            filename=_clean_filename(filename),
            content_type=content_type or "application/octet-stream",
            size=size,
            sha256=sha256,
            created_at=datetime.now(UTC),
        )
        fd, name = tempfile.mkstemp(dir=self.root, prefix=_TMP_PREFIX)
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            fp.write(meta.model_dump_json())
        os.replace(name, self._meta_path(file_id))
        return meta

    def get(self, file_id: str) -> StoredFile | None:
        """Return a file's metadata, or None if the id is unknown or not one of ours."""
        if not self.is_valid_id(file_id):
            return None
        try:
            raw = self._meta_path(file_id).read_bytes()
        except FileNotFoundError:
            return None
        return StoredFile.model_validate_json(raw)

    def delete(self, file_id: str) -> bool:
        """Remove a file and its sidecar; say whether it existed."""
        if self.get(file_id) is None:
            return False
        self._meta_path(file_id).unlink(missing_ok=True)  # sidecar first: invisible at once
        self.path(file_id).unlink(missing_ok=True)
        return True

    def scratch_path(self, suffix: str = "") -> Path:
        """Return an unused temp path inside the store, for tools that write a file themselves."""
        return self.root / f"{_TMP_PREFIX}{secrets.token_urlsafe(12)}{suffix}"

    def open_writer(self, *, max_bytes: int, filename: str, content_type: str) -> FileWriter:
        """Start a streamed write; use as a context manager and call commit() at the end."""
        return FileWriter(self, max_bytes=max_bytes, filename=filename, content_type=content_type)

    def save_stream(
        self, chunks: Iterable[bytes], *, max_bytes: int, filename: str, content_type: str
    ) -> StoredFile:
        """Store an iterable of chunks without holding the whole file in memory."""
        with self.open_writer(
            max_bytes=max_bytes, filename=filename, content_type=content_type
        ) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    async def save_async_stream(
        self, chunks: AsyncIterator[bytes], *, max_bytes: int, filename: str, content_type: str
    ) -> StoredFile:
        """Store an async stream (an upload) with disk work off the event loop."""
        writer = await asyncio.to_thread(
            self.open_writer, max_bytes=max_bytes, filename=filename, content_type=content_type
        )
        buf = bytearray()
        try:
            async for chunk in chunks:
                buf += chunk
                # Flushing once past the limit makes write() refuse it, whatever the chunk sizes.
                if len(buf) >= _ASYNC_FLUSH_BYTES or writer.size + len(buf) > max_bytes:
                    await asyncio.to_thread(writer.write, bytes(buf))
                    buf.clear()
            if buf:
                await asyncio.to_thread(writer.write, bytes(buf))
            return await asyncio.to_thread(writer.commit)
        except BaseException:
            # Also on cancellation (client went away): leave no partial file behind.
            writer.abort()
            raise

    def import_file(
        self, src: Path, *, filename: str, content_type: str, max_bytes: int | None = None
    ) -> StoredFile:
        """Adopt a file written at scratch_path(): hash it, then rename it in (no copy)."""
        try:
            if src.parent != self.root or not src.name.startswith(_TMP_PREFIX):
                raise ValueError(f"{src} is not a scratch path of this store")
            digest = hashlib.sha256()
            with src.open("rb") as fp:
                size = os.fstat(fp.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise PermanentError(
                        f"file is larger than the limit of {max_bytes} bytes", code="too_large"
                    )
                while chunk := fp.read(1 << 20):
                    digest.update(chunk)
                os.fsync(fp.fileno())
            return self._publish(src, size, digest.hexdigest(), filename, content_type)
        finally:
            # Renamed away on success; on any failure the scratch file must not linger.
            src.unlink(missing_ok=True)
