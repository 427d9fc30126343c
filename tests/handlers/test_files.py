"""File storage, the built-in operations and the file job, run without a broker."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from handlers.errors import PermanentError
from handlers.files import FileJob, FileStore, OpContext, StoredFile
from handlers.files.catalog import (
    OPERATION_PARAMS,
    OPERATIONS,
    NoParams,
    ThumbnailParams,
    operation,
)
from handlers.files.job import run_file_job

MB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def visible_files(store: FileStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir())


def save_bytes(store: FileStore, data: bytes, name: str = "f.bin") -> StoredFile:
    return store.save_stream(
        [data], max_bytes=len(data) + 1, filename=name, content_type="application/octet-stream"
    )


def image_bytes(fmt: str, size: tuple[int, int] = (400, 200), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "red").save(buf, format=fmt)
    return buf.getvalue()


def run_op(store: FileStore, name: str, src: Path, params: dict[str, Any] | None = None) -> Any:
    op = OPERATIONS[name]
    seen: list[float] = []
    result = op.func(
        src, op.params_model.model_validate(params or {}), OpContext(store, seen.append)
    )
    return result


def job(source: dict[str, str], *ops: dict[str, Any]) -> FileJob:
    return FileJob.model_validate({"source": source, "operations": list(ops)})


# --- the catalog ------------------------------------------------------------------------


def test_every_declared_operation_is_implemented_with_its_declared_params() -> None:
    # the API validates against the declarations, workers run the implementations: they must agree
    assert set(OPERATIONS) == set(OPERATION_PARAMS)
    for name, op in OPERATIONS.items():
        assert op.params_model is OPERATION_PARAMS[name], name


def test_an_operation_must_be_declared_with_its_params_model() -> None:
    def undeclared(src: Path, params: NoParams, ctx: OpContext) -> dict[str, Any]:
        return {}

    def mistyped(src: Path, params: ThumbnailParams, ctx: OpContext) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="declare it"):
        operation("not_declared")(undeclared)
    with pytest.raises(TypeError, match="NoParams"):
        operation("sha256")(mistyped)
    assert "not_declared" not in OPERATIONS


# --- storage -----------------------------------------------------------------------------


def test_save_stream_round_trip_and_hash(store: FileStore) -> None:
    chunks = [os.urandom(100_000) for _ in range(5)]
    stored = store.save_stream(
        iter(chunks), max_bytes=10 * MB, filename="../../etc/a.bin", content_type="x/y"
    )
    data = b"".join(chunks)
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.filename == "a.bin"  # path parts of a client's name are dropped
    assert store.path(stored.id).read_bytes() == data
    assert store.get(stored.id) == stored
    assert FileStore.is_valid_id(stored.id)
    assert visible_files(store) == sorted([stored.id, stored.id + ".json"])


def test_too_large_leaves_no_file(store: FileStore) -> None:
    with pytest.raises(PermanentError) as info:
        store.save_stream([b"a" * 600, b"b" * 600], max_bytes=1000, filename="x", content_type="")
    assert info.value.code == "too_large"
    assert visible_files(store) == []


def test_async_stream_round_trip_and_too_large(store: FileStore) -> None:
    async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
        for i in range(count):
            yield bytes([i % 256]) * size

    stored = asyncio.run(
        store.save_async_stream(
            chunks(40, 64 * 1024), max_bytes=10 * MB, filename="u", content_type="t"
        )
    )
    expected = b"".join(bytes([i]) * 64 * 1024 for i in range(40))
    assert stored.sha256 == hashlib.sha256(expected).hexdigest()
    with pytest.raises(PermanentError, match="larger") as info:
        asyncio.run(
            store.save_async_stream(
                chunks(40, 64 * 1024), max_bytes=MB, filename="u", content_type="t"
            )
        )
    assert info.value.code == "too_large"
    assert visible_files(store) == sorted([stored.id, stored.id + ".json"])


@pytest.mark.parametrize(
    "bad", ["../x", "f_../../../../etc/passwd", "/etc/passwd", "f_abc", "f_" + "a" * 20 + "/..", ""]
)
def test_path_traversal_ids_refused(store: FileStore, bad: str) -> None:
    assert store.get(bad) is None
    with pytest.raises(PermanentError) as info:
        store.path(bad)
    assert info.value.code == "invalid_file_id"


def test_delete(store: FileStore) -> None:
    stored = save_bytes(store, b"abc")
    assert store.delete(stored.id) is True
    assert store.get(stored.id) is None
    assert store.delete(stored.id) is False
    assert visible_files(store) == []


# --- operations --------------------------------------------------------------------------


def test_sha256_op_matches_hashlib_and_reports_progress(store: FileStore, tmp_path: Path) -> None:
    data = os.urandom(5 * MB + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    seen: list[float] = []
    result = OPERATIONS["sha256"].func(
        src, OPERATIONS["sha256"].params_model(), OpContext(store, seen.append)
    )
    assert result == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 6


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (image_bytes("PNG"), "image/png"),
        (image_bytes("JPEG"), "image/jpeg"),
        (image_bytes("GIF"), "image/gif"),
        (image_bytes("WEBP"), "image/webp"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "application/pdf"),
        (b"\x1f\x8b\x08\x00" + bytes(16), "application/gzip"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "video/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (b"ID3\x04\x00" + bytes(10), "audio/mpeg"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
        ("héllo wörld, plain text ✓\n".encode() * 300, "text/plain; charset=utf-8"),
        (b"\x00\x01\x02\x03binary", "application/octet-stream"),
        (b"", "application/octet-stream"),
    ],
)
def test_content_type(store: FileStore, tmp_path: Path, data: bytes, expected: str) -> None:
    src = tmp_path / "f"
    src.write_bytes(data)
    assert run_op(store, "content_type", src) == {"content_type": expected}


def test_content_type_zip(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "a.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("a.txt", "hello")
    assert run_op(store, "content_type", src)["content_type"] == "application/zip"


@pytest.mark.parametrize(("fmt", "mode"), [("png", "RGBA"), ("jpeg", "RGBA"), ("webp", "CMYK")])
def test_thumbnail_keeps_aspect_and_format(
    store: FileStore, tmp_path: Path, fmt: str, mode: str
) -> None:
    src = tmp_path / "in"
    src.write_bytes(image_bytes("TIFF" if mode == "CMYK" else "PNG", (400, 200), mode))
    result = run_op(store, "thumbnail", src, {"width": 100, "height": 100, "format": fmt})
    assert (result["width"], result["height"], result["format"]) == (100, 50, fmt)
    meta = store.get(result["output_file_id"])
    assert meta is not None and meta.content_type == f"image/{fmt}"
    with Image.open(store.path(meta.id)) as out:
        assert out.format == fmt.upper() and out.size == (100, 50)
    assert meta.sha256 == hashlib.sha256(store.path(meta.id).read_bytes()).hexdigest()


def test_thumbnail_follows_exif_rotation(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "phone.jpg"
    im = Image.new("RGB", (400, 200), "blue")
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: stored landscape, shown turned 90 degrees
    im.save(src, format="JPEG", exif=exif.tobytes())
    result = run_op(store, "thumbnail", src, {"width": 100, "height": 100})
    assert (result["width"], result["height"]) == (50, 100)


def test_thumbnail_of_non_image(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("not an image")
    with pytest.raises(PermanentError) as info:
        run_op(store, "thumbnail", src, {"width": 10, "height": 10})
    assert info.value.code == "not_an_image"


def test_thumbnail_refuses_decompression_bomb(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("handlers.files.images.MAX_IMAGE_PIXELS", 1000)
    src = tmp_path / "big.png"
    src.write_bytes(image_bytes("PNG", (100, 100)))
    with pytest.raises(PermanentError) as info:
        run_op(store, "thumbnail", src, {"width": 10, "height": 10})
    assert info.value.code == "image_too_large"


@pytest.mark.parametrize("name", ["video_probe", "video_transcode"])
def test_ffmpeg_missing(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(PermanentError, match="not installed") as info:
        run_op(store, name, src)
    assert info.value.code == "ffmpeg_not_available"


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"
)


def generated_clip(tmp_path: Path, size: str = "64x48") -> Path:
    """A 1 s test-pattern clip with a tone, made by ffmpeg itself."""
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10:duration=1",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
         "-pix_fmt", "yuv420p", "-shortest", str(clip)],
        check=True, timeout=60,
    )  # fmt: skip
    return clip


@needs_ffmpeg
def test_video_probe_of_generated_clip(store: FileStore, tmp_path: Path) -> None:
    result = run_op(store, "video_probe", generated_clip(tmp_path))
    video = [s for s in result["streams"] if s["codec_type"] == "video"]
    assert video and (video[0]["width"], video[0]["height"]) == (64, 48)
    assert [s["codec_type"] for s in result["streams"]].count("audio") == 1
    assert result["duration"] == pytest.approx(1.0, abs=0.2)


@needs_ffmpeg
@pytest.mark.parametrize(("fmt", "video_codec"), [("mp4", "h264"), ("webm", "vp9")])
def test_video_transcode_scales_down_and_stores_a_playable_file(
    store: FileStore, tmp_path: Path, fmt: str, video_codec: str
) -> None:
    result = run_op(
        store, "video_transcode", generated_clip(tmp_path, "128x96"),
        {"format": fmt, "max_height": 48},
    )  # fmt: skip
    assert result["format"] == fmt and result["size"] > 0
    stored = store.path(result["output_file_id"])
    probed = run_op(store, "video_probe", stored)
    video = [s for s in probed["streams"] if s["codec_type"] == "video"]
    assert video[0]["codec_name"] == video_codec
    assert (video[0]["width"], video[0]["height"]) == (64, 48)  # aspect kept, height capped
    assert probed["duration"] == pytest.approx(1.0, abs=0.3)


def test_sha256_memory_stays_flat_in_a_subprocess(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.bin"
    with sparse.open("wb") as fp:
        fp.truncate(256 * MB)  # holes read back as zeros: a big file without writing it
    script = textwrap.dedent(
        f"""
        import json, resource
        from pathlib import Path
        from handlers.files import FileStore, OpContext
        from handlers.files.job import OPERATIONS
        op = OPERATIONS["sha256"]
        ctx = OpContext(FileStore(Path({str(tmp_path / "s")!r})), lambda f: None)
        result = op.func(Path({str(sparse)!r}), op.params_model(), ctx)
        # VmHWM is this process's own peak; ru_maxrss would carry the forking parent's peak
        # across exec (Linux keeps the larger of the two), and pytest's is large
        status = Path("/proc/self/status").read_text().splitlines()
        hwm = [line for line in status if line.startswith("VmHWM")]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss_kb = int(hwm[0].split()[1]) if hwm else usage.ru_maxrss
        print(json.dumps({{**result, "rss_kb": rss_kb}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    report = json.loads(out.stdout)
    zeros = hashlib.sha256()
    for _ in range(256):
        zeros.update(bytes(MB))
    assert report["sha256"] == zeros.hexdigest() and report["size"] == 256 * MB
    assert report["rss_kb"] < 100 * 1024, report


# --- the job -----------------------------------------------------------------------------


def test_job_runs_operations_in_order_with_monotonic_progress(store: FileStore) -> None:
    src = save_bytes(store, image_bytes("PNG", (300, 600)), "pic.png")
    seen: list[int] = []
    result = run_file_job(
        job({"file_id": src.id}, {"name": "sha256"}, {"name": "content_type"},
            {"name": "thumbnail", "params": {"width": 50, "height": 50, "format": "jpeg"}}),
        store, progress=seen.append, max_fetch_bytes=MB,
    )  # fmt: skip
    assert [r.name for r in result.results] == ["sha256", "content_type", "thumbnail"]
    assert result.results[0].result["sha256"] == src.sha256
    assert result.results[1].result == {"content_type": "image/png"}
    assert result.source_file_id == src.id
    assert result.outputs == [result.results[2].result["output_file_id"]]
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(set(seen))


def test_job_fetches_url_source_through_the_given_fetcher(store: FileStore) -> None:
    calls: list[tuple[str, int]] = []

    def fetch(url: str, dest: Path, max_bytes: int) -> int:
        calls.append((url, max_bytes))
        dest.write_bytes(b"%PDF-1.4 hello")
        return 14

    seen: list[int] = []
    result = run_file_job(
        job({"url": "https://example.com/docs/r%C3%A9sum%C3%A9.pdf"}, {"name": "sha256"}),
        store, progress=seen.append, fetch=fetch, max_fetch_bytes=1000,
    )  # fmt: skip
    assert calls == [("https://example.com/docs/r%C3%A9sum%C3%A9.pdf", 1000)]
    meta = store.get(result.source_file_id)
    assert meta is not None
    assert (meta.filename, meta.content_type, meta.size) == ("résumé.pdf", "application/pdf", 14)
    assert seen == [0, 50, 99, 100]  # 99: the last step ended; 100: the result is built


def test_job_url_source_without_fetcher_or_too_large(store: FileStore) -> None:
    with pytest.raises(PermanentError) as info:
        run_file_job(job({"url": "https://example.com/a"}, {"name": "sha256"}), store,
                     progress=lambda p: None, max_fetch_bytes=10)  # fmt: skip
    assert info.value.code == "fetch_not_configured"

    def lying_fetch(url: str, dest: Path, max_bytes: int) -> int:
        dest.write_bytes(b"x" * 50)
        return 50

    with pytest.raises(PermanentError) as info:
        run_file_job(job({"url": "https://example.com/a"}, {"name": "sha256"}), store,
                     progress=lambda p: None, fetch=lying_fetch, max_fetch_bytes=10)  # fmt: skip
    assert info.value.code == "too_large"
    assert visible_files(store) == []


def test_job_missing_file(store: FileStore) -> None:
    with pytest.raises(PermanentError) as info:
        run_file_job(job({"file_id": FileStore.new_id()}, {"name": "sha256"}), store,
                     progress=lambda p: None, max_fetch_bytes=1)  # fmt: skip
    assert info.value.code == "file_not_found"


def test_failed_job_removes_the_outputs_it_made(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # the video step fails: no ffprobe
    src = save_bytes(store, image_bytes("PNG"))
    thumb = {"name": "thumbnail", "params": {"width": 10, "height": 10}}
    with pytest.raises(PermanentError, match="not installed"):
        run_file_job(job({"file_id": src.id}, thumb, {"name": "video_probe"}), store,
                     progress=lambda p: None, max_fetch_bytes=1)  # fmt: skip
    assert visible_files(store) == sorted([src.id, src.id + ".json"])


def _errors(make: Callable[[], object]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        make()
    return [(".".join(map(str, e["loc"])), e["type"]) for e in info.value.errors()]


def test_job_validation_errors_name_the_field() -> None:
    fid = FileStore.new_id()
    assert _errors(lambda: job({"file_id": fid}, {"name": "nope"})) == [
        ("operations.0.name", "unknown_operation")
    ]
    assert _errors(lambda: job({"file_id": fid, "url": "https://e.com/x"}, {"name": "sha256"})) == [
        ("source", "value_error")
    ]
    assert _errors(lambda: job({}, {"name": "sha256"})) == [("source", "value_error")]
    bad_params = {"name": "thumbnail", "params": {"width": 0, "height": 10, "format": "bmp"}}
    assert _errors(lambda: job({"file_id": fid}, {"name": "sha256"}, bad_params)) == [
        ("operations.1.params.width", "greater_than_equal"),
        ("operations.1.params.format", "literal_error"),
    ]
    assert _errors(lambda: job({"file_id": fid}, {"name": "sha256", "params": {"x": 1}})) == [
        ("operations.0.params.x", "extra_forbidden")
    ]
    assert _errors(lambda: job({"file_id": fid})) == [("operations", "too_short")]
    assert _errors(lambda: job({"file_id": "../../etc/passwd"}, {"name": "sha256"})) == [
        ("source.file_id", "string_pattern_mismatch")
    ]


def test_job_round_trips_through_json() -> None:
    original = job(
        {"file_id": FileStore.new_id()},
        {"name": "thumbnail", "params": {"width": 5, "height": 7}},
        {"name": "video_transcode", "params": {"format": "webm", "max_height": 480}},
    )
    again = FileJob.model_validate_json(original.model_dump_json())
    assert again == original
    assert again.model_dump()["operations"][0]["params"] == {
        "width": 5,
        "height": 7,
        "format": "png",
    }
