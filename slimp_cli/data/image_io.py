"""The one square resize of the project, and the one way images are opened (`open_image`: the
decompression-bomb limit); PIL only, so ingest never imports torch.

Ingest stores images resized with it; training and the figures resize with it too, so an image
already at the model's size is never resampled twice.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from ..core.errors import SlimpError


def resize_center(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> `size` (bicubic, aspect kept), then centre crop to `size` x `size`.

    A no-op for an image that already has the size (ingest stores them so). `reducing_gap`
    lets PIL reduce large images in integer steps first: same result every run, much faster.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# Decompression bombs: PIL's limit (Image.MAX_IMAGE_PIXELS, 89,478,485 by default) is the one
# limit, set by `--max-image-pixels`. PIL alone only warns up to twice the limit and, above it,
# raises an error that names no size; `open_image` refuses at the limit and names W x H.
class ImageTooLarge(SlimpError):
    """An image whose header claims more pixels than the limit (e.g. a decompression bomb)."""


def set_max_image_pixels(limit: int | None) -> None:
    """`--max-image-pixels`: the most pixels (width x height) an image may have to be decoded,
    in this process and the workers it forks; 0 or None: no limit."""
    if limit is not None and limit < 0:
        raise SlimpError(f"--max-image-pixels must be >= 0 (got {limit}; 0 = no limit)")
    Image.MAX_IMAGE_PIXELS = int(limit) if limit else None


def max_image_pixels() -> int | None:
    """The current limit (None: no limit)."""
    return Image.MAX_IMAGE_PIXELS


CURRENT_LIMIT = object()  # `open_image(limit=...)` default: the limit set now


def open_image(data: bytes, *, where: str | None = None, limit=CURRENT_LIMIT) -> Image.Image:
    """`PIL.Image.open` of encoded bytes (lazy: nothing decoded yet), refused with ImageTooLarge
    when the header claims more than `limit` pixels (default: the current limit, see
    `set_max_image_pixels`; None: no limit). Other PIL errors pass through."""
    limit = Image.MAX_IMAGE_PIXELS if limit is CURRENT_LIMIT else limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = _open(data, limit)
        except Image.DecompressionBombError:  # above twice PIL's limit: read the header only
            img = _open(data, None)
    w, h = img.size
    if limit is not None and w * h > limit:
        prefix = f"{where}: " if where else ""
        raise ImageTooLarge(
            f"{prefix}image too large: {w} x {h} pixels (limit {limit:,}; raise it with "
            "--max-image-pixels N, 0 = no limit)"
        )
    return img


def _open(data: bytes, limit: int | None) -> Image.Image:
    """Image.open under PIL's bomb check at `limit` (PIL reads its module-level setting)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = before
