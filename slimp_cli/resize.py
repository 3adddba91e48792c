"""The one square resize of the project (PIL only, so ingest never imports torch).

Ingest stores images resized with it; training and the figures resize with it too, so an image
already at the model's size is never resampled twice.
"""

from __future__ import annotations

from PIL import Image


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
