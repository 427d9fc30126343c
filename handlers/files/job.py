"""The file job: take one source file (stored or fetched) and run a list of operations on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from pydantic import HttpUrl

# The built-in operations register themselves in the catalog when imported: a worker that runs
# file jobs has them all from here.
import handlers.files.images
import handlers.files.operations  # noqa: F401
from handlers.errors import PermanentError
from handlers.files.catalog import OPERATIONS, OpContext
from handlers.files.models import FileJob, FileResult, OperationResult
from handlers.files.operations import detect_content_type
from handlers.files.storage import FileStore, StoredFile

Fetch = Callable[[str, Path, int], int]


class _Progress:
    """Maps per-step fractions onto one 0..100 scale that only goes up."""

    def __init__(self, report: Callable[[int], None], steps: int) -> None:
        self._report = report
        self._steps = steps
        self._step = 0
        self._last = -1

    def fraction(self, done: float) -> None:
        done = min(max(done, 0.0), 1.0)
        # 100 is kept for run_file_job's last line, so "100" always means the result exists.
        self._emit(min(int(100 * (self._step + done) / self._steps), 99))

    def next_step(self) -> None:
        self._step += 1
        self.fraction(0.0)

    def finish(self) -> None:
        self._emit(100)

    def _emit(self, percent: int) -> None:
        # Callers may write progress to Redis: only whole-percent increases go out.
        if percent > self._last:
            self._last = percent
            self._report(percent)


def _filename_from_url(url: HttpUrl) -> str:
    return unquote(PurePosixPath(url.path or "").name) or "download"


def _fetch_source(
    url: HttpUrl, store: FileStore, fetch: Fetch | None, max_bytes: int
) -> StoredFile:
    if fetch is None:
        raise PermanentError("this worker cannot fetch URL sources", code="fetch_not_configured")
    dest = store.scratch_path()
    try:
        fetch(str(url), dest, max_bytes)
        with dest.open("rb") as fp:
            head = fp.read(4096)
        return store.import_file(
            dest,
            filename=_filename_from_url(url),
            content_type=detect_content_type(head),
            max_bytes=max_bytes,  # checked again here: the fetcher is someone else's code
        )
    finally:
        dest.unlink(missing_ok=True)


def run_file_job(
    job: FileJob,
    store: FileStore,
    *,
    progress: Callable[[int], None],
    fetch: Fetch | None = None,
    max_fetch_bytes: int,
) -> FileResult:
    """Resolve the source, run the operations in order and report progress 0..100."""
    fetching = job.source.url is not None
    meter = _Progress(progress, steps=len(job.operations) + int(fetching))
    meter.fraction(0.0)
    created: list[str] = []
    try:
        if job.source.url is not None:
            source = _fetch_source(job.source.url, store, fetch, max_fetch_bytes)
            created.append(source.id)
            meter.next_step()
        else:
            assert job.source.file_id is not None  # FileSource guarantees one of the two
            found = store.get(job.source.file_id)
            if found is None:
                raise PermanentError(
                    f"no stored file {job.source.file_id!r}", code="file_not_found"
                )
            source = found
        src = store.path(source.id)
        results: list[OperationResult] = []
        outputs: list[str] = []
        for index, spec in enumerate(job.operations):
            if index:
                meter.next_step()
            ctx = OpContext(store=store, progress=meter.fraction)
            result = OPERATIONS[spec.name].func(src, spec.params, ctx)
            results.append(OperationResult(name=spec.name, result=result))
            if isinstance(out := result.get("output_file_id"), str):
                outputs.append(out)
                created.append(out)
    except BaseException:
        # A failed run leaves nothing behind; a retry starts clean and orphans never pile up.
        for file_id in created:
            store.delete(file_id)
        raise
    meter.finish()
    return FileResult(source_file_id=source.id, results=results, outputs=outputs)
