"""The built-in file operations that need no image library: hashing, sniffing, ffmpeg's probe and
transcode (the thumbnail, which needs Pillow, is images.py). Each registers itself on import
(catalog.py declares the names and params a caller may use)."""

from __future__ import annotations

import codecs
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from handlers.errors import PermanentError, TransientError
from handlers.files.catalog import NoParams, OpContext, TranscodeParams, operation

CHUNK = 1 << 20
PROBE_TIMEOUT_S = 60.0
TRANSCODE_TIMEOUT_S = 3600.0


@operation("sha256")
def sha256(src: Path, params: NoParams, ctx: OpContext) -> dict[str, Any]:
    """Hash the file in 1 MiB chunks into one reused buffer: constant memory, no copies."""
    digest = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    with src.open("rb", buffering=0) as fp:
        total = max(src.stat().st_size, 1)
        size = 0
        while n := fp.readinto(buf):
            digest.update(buf[:n])  # hashlib drops the GIL for big buffers
            size += n
            ctx.progress(size / total)
    return {"sha256": digest.hexdigest(), "size": size}


_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),  # empty archive
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"\x1a\x45\xdf\xa3", "video/x-matroska"),  # EBML; webm told apart by its DocType below
    (0, b"ID3", "audio/mpeg"),
    (0, b"\xff\xfb", "audio/mpeg"),  # MPEG-1 layer III frame sync, no ID3 tag
    (0, b"\xff\xf3", "audio/mpeg"),
    (4, b"ftyp", "video/mp4"),  # ISO-BMFF; brand refined below
]
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_FTYP = {b"qt  ": "video/quicktime", b"M4A ": "audio/mp4", b"avif": "image/avif"}


def detect_content_type(head: bytes) -> str:
    """Name a media type from a file's first bytes (a few KiB), by magic numbers."""
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    for offset, magic, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if mime == "video/mp4":
                return _FTYP.get(head[8:12], mime)
            if mime == "video/x-matroska" and b"webm" in head[:64]:
                return "video/webm"
            return mime
    try:
        # Not final: a multi-byte character cut at the end of the sample is still text.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "application/octet-stream"
    if text and all(ch.isprintable() or ch in "\t\n\r\f" for ch in text.lstrip("\ufeff")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


@operation("content_type")
def content_type(src: Path, params: NoParams, ctx: OpContext) -> dict[str, Any]:
    """Detect the file's media type from its magic bytes."""
    with src.open("rb") as fp:
        head = fp.read(4096)
    return {"content_type": detect_content_type(head)}


# We force the demuxer from our own sniffing, so ffmpeg never runs playlist/concat demuxers on
# uploaded text (they can read local files or fetch URLs).
_DEMUXERS = {"video/mp4": "mov", "video/quicktime": "mov", "audio/mp4": "mov",
             "video/webm": "matroska", "video/x-matroska": "matroska", "video/x-msvideo": "avi",
             "audio/mpeg": "mp3", "audio/wav": "wav"}  # fmt: skip


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PermanentError(
            f"{name} is not installed on this worker; install ffmpeg to use video operations",
            code="ffmpeg_not_available",
        )
    return path


def _input_args(src: Path) -> list[str]:
    with src.open("rb") as fp:
        mime = detect_content_type(fp.read(4096))
    if mime not in _DEMUXERS:
        raise PermanentError(f"not a supported audio/video file ({mime})", code="not_a_video")
    return ["-protocol_whitelist", "file", "-f", _DEMUXERS[mime], "-i", str(src)]


def _run(cmd: list[str], timeout: float) -> str:
    tool = Path(cmd[0]).name
    try:
        # An argv list, no shell; the only outside input is a store path we named ourselves.
        proc = subprocess.run(  # noqa: S603
            cmd, capture_output=True, timeout=timeout, check=False, text=True, errors="replace"
        )
    except subprocess.TimeoutExpired as exc:
        # Same input, same tool: it would time out again, so do not retry.
        raise PermanentError(f"{tool} ran over {timeout:.0f}s", code="ffmpeg_timeout") from exc
    if proc.returncode < 0:  # killed by a signal (OOM killer, shutdown): may work next time
        raise TransientError(f"{tool} was killed", code="ffmpeg_killed")
    if proc.returncode != 0:
        raise PermanentError(proc.stderr.strip()[-500:] or "ffmpeg failed", code="ffmpeg_failed")
    return proc.stdout


@operation("video_probe")
def video_probe(src: Path, params: NoParams, ctx: OpContext) -> dict[str, Any]:
    """Read container and stream facts with ffprobe."""
    ffprobe = _tool("ffprobe")
    out = _run([ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                *_input_args(src)], PROBE_TIMEOUT_S)  # fmt: skip
    info = json.loads(out)
    fmt = info.get("format", {})
    keys = ("index", "codec_type", "codec_name", "width", "height", "sample_rate", "channels")
    streams = [{k: s[k] for k in keys if k in s} for s in info.get("streams", [])]
    duration = fmt.get("duration")
    return {"format_name": fmt.get("format_name"), "streams": streams,
            "duration": float(duration) if duration else None}  # fmt: skip


_CODECS = {
    "mp4": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-movflags", "+faststart"],
    "webm": ["-c:v", "libvpx-vp9", "-crf", "32", "-b:v", "0", "-row-mt", "1", "-c:a", "libopus"],
}  # fmt: skip


@operation("video_transcode")
def video_transcode(src: Path, params: TranscodeParams, ctx: OpContext) -> dict[str, Any]:
    """Re-encode to mp4 (H.264/AAC) or webm (VP9/Opus), optionally scaled down, and store it."""
    ffmpeg = _tool("ffmpeg")
    # Quoted so the comma stays inside min(); -2 keeps the width even, as encoders need.
    scale = ["-vf", f"scale=-2:'min(ih,{params.max_height})'"] if params.max_height else []
    dest = ctx.store.scratch_path("." + params.format)
    try:
        _run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *_input_args(src),
              *scale, *_CODECS[params.format], "-f", params.format, str(dest)],
             TRANSCODE_TIMEOUT_S)  # fmt: skip
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    ctx.progress(0.9)
    stored = ctx.store.import_file(dest, filename=f"video.{params.format}",
                                   content_type=f"video/{params.format}",
                                   max_bytes=ctx.max_output_bytes)  # fmt: skip
    ctx.progress(1.0)
    return {"output_file_id": stored.id, "format": params.format, "size": stored.size}
