"""The thumbnail operation: the one built-in operation that needs Pillow (workers only)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, cast

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from handlers.errors import PermanentError
from handlers.files.catalog import OpContext, ThumbnailParams, operation

# Our own bomb limit, checked from the header before any pixel is decoded (about 200 MB as RGBA).
MAX_IMAGE_PIXELS = 50_000_000

# Modes each encoder takes as they are; anything else is converted first.
_KEEP_MODES = {"png": ("1", "L", "LA", "P", "RGB", "RGBA"), "jpeg": ("L", "RGB"),
               "webp": ("RGB", "RGBA")}  # fmt: skip


@operation("thumbnail")
def thumbnail(src: Path, params: ThumbnailParams, ctx: OpContext) -> dict[str, Any]:
    """Scale an image to fit the box, keeping its aspect ratio, and store the result."""
    try:
        with Image.open(src) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                size = f"{im.width}x{im.height}"
                raise PermanentError(f"image of {size} pixels is too large", code="image_too_large")
            # Phones store rotated pixels plus an EXIF turn; fit the box as the image will be seen.
            turned = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            im.thumbnail((params.height, params.width) if turned else (params.width, params.height))
            out = ImageOps.exif_transpose(im)
    except UnidentifiedImageError as exc:
        raise PermanentError("the file is not an image we can read", code="not_an_image") from exc
    except Image.DecompressionBombError as exc:
        raise PermanentError(str(exc), code="image_too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt image data
        raise PermanentError(f"the image could not be decoded: {exc}", code="not_an_image") from exc
    ctx.progress(0.5)
    if out.mode not in _KEEP_MODES[params.format]:
        alpha = params.format != "jpeg" and out.has_transparency_data
        out = out.convert("RGBA" if alpha else "RGB")
    with ctx.store.open_writer(
        max_bytes=ctx.max_output_bytes,
        filename=f"thumbnail.{params.format}",
        content_type=f"image/{params.format}",
    ) as writer:
        # FileWriter has write() only, which is all Pillow needs from a file object.
        out.save(cast("IO[bytes]", writer), format=params.format.upper())
        stored = writer.commit()
    ctx.progress(1.0)
    dims = {"width": out.width, "height": out.height}
    return {"output_file_id": stored.id, **dims, "format": params.format}
