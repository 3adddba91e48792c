"""Finding, decoding and normalising lesion images.

Resizing policy (docs/datasets.md): the shorter side is resized to `size` (bicubic, aspect
ratio kept), then the centre `size` x `size` square is cropped; the result is always RGB JPEG
quality 95, never the original size. EXIF orientation is applied first (smartphone photos).
Every image is fully decoded, so truncated or non-image files are caught here, not in training.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps

from ..data.image_io import CURRENT_LIMIT, ImageTooLarge, open_image, resize_center

# Extensions considered images when searching a folder (lower case, with the dot).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
JPEG_QUALITY = 95


class ImageRef(NamedTuple):
    """Where one image lives: a file (`key` None) or a dataset `key` inside an HDF5 file."""

    path: str
    key: str | None = None

    def display(self) -> str:
        return f"{self.path}[{self.key}]" if self.key else self.path


class ImageLocator:
    """Index of every image file under a folder, found by relative path, name or stem.

    Releases move, rename and convert images (PAD-UFES-20 tables say `.png`, users keep
    `.jpg`), so a reference is matched by exact relative path first, then by file name, then
    by stem whatever the extension. Ties are broken deterministically (extension order above,
    then path), so the same folder always gives the same choice.
    """

    def __init__(self, root: Path, *, subdirs: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.subdirs = subdirs
        # Built on the first reference that is not an exact path: a release whose table names
        # its files exactly (SLICE-3D's 401,059) never pays for the index's memory.
        self._index: tuple[dict[str, list[Path]], dict[str, list[Path]]] | None = None

    def _names(self) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
        if self._index is None:
            by_name: dict[str, list[Path]] = {}
            by_stem: dict[str, list[Path]] = {}
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
                dirnames.sort()
                for name in sorted(filenames):
                    if not name.lower().endswith(IMAGE_EXTS) or name.startswith("."):
                        continue
                    path = Path(dirpath) / name
                    by_name.setdefault(name.lower(), []).append(path)
                    by_stem.setdefault(Path(name).stem.lower(), []).append(path)
            self._index = by_name, by_stem
        return self._index

    def __len__(self) -> int:
        return sum(len(v) for v in self._names()[0].values())

    def find(self, ref: str) -> Path | None:
        """The file for a table's image reference, or None when no candidate exists."""
        ref = ref.strip().replace("\\", "/")
        if not ref:
            return None
        for base in (self.root, *(self.root / d for d in self.subdirs)):
            candidate = base / ref
            if candidate.is_file():
                return candidate
        by_name, by_stem = self._names()
        name = ref.rsplit("/", 1)[-1]
        hits = by_name.get(name.lower())
        if not hits:
            stem = name.rsplit(".", 1)[0] if "." in name else name
            hits = by_stem.get(stem.lower()) or by_stem.get(name.lower())
        if not hits:
            return None
        return min(hits, key=_preference)


def _preference(path: Path) -> tuple:
    ext = path.suffix.lower()
    rank = IMAGE_EXTS.index(ext) if ext in IMAGE_EXTS else len(IMAGE_EXTS)
    return (rank, len(path.parts), str(path))


# ---- worker side: runs in a process pool; must stay cheap to import and picklable ----------

_H5_CACHE: dict[str, object] = {}


def read_bytes(ref: ImageRef) -> bytes:
    """Raw encoded bytes of an image (file contents, or the HDF5 dataset's bytes)."""
    if ref.key is None:
        return Path(ref.path).read_bytes()
    import h5py  # only SLICE-3D needs it

    handle = _H5_CACHE.get(ref.path)
    if handle is None:
        handle = _H5_CACHE[ref.path] = h5py.File(ref.path, "r")
    value = handle[ref.key][()]
    # ISIC 2024 stores a bytes scalar; some re-exports store a uint8 array.
    return (
        value.tobytes()
        if hasattr(value, "tobytes") and not isinstance(value, bytes)
        else bytes(value)
    )


def normalise_image(
    data: bytes, size: int, *, max_pixels=CURRENT_LIMIT
) -> tuple[bytes, tuple[int, int]]:
    """Decode fully, orient, convert to RGB, square-resize and re-encode as JPEG q95.

    Returns the JPEG bytes and the original (width, height). Raises on any unreadable,
    truncated or non-image input (PIL's errors, or ValueError for an empty file), and
    ImageTooLarge when the image has more than `max_pixels` pixels (default: the current
    limit, `image_io.set_max_image_pixels`; None: no limit).
    """
    if not data:
        raise ValueError("empty file")
    img = open_image(data, limit=max_pixels)
    original = img.size
    if img.format == "JPEG":
        img.draft("RGB", (size, size))  # DCT-domain downscale: same result every run, much faster
    img.load()  # full decode: a truncated file raises here
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    img = resize_center(img, size)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    return out.getvalue(), original


# Modes whose pixels PIL's convert("RGB") clips to 0..255 instead of scaling (16-bit
# greyscale would become uniformly white).
_WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
# Transparent pixels are composited onto this background (what a viewer shows on white).
_BACKGROUND = (255, 255, 255)


class UnsupportedImage(ValueError):
    """An image mode that cannot be turned into RGB faithfully."""


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image of any PIL mode, intensities kept in proportion.

    16-bit and 32-bit integer / float greyscale is scaled to 0..255 by the range its values
    use (0..1 floats, 8-bit, 16-bit, else min..max), never clipped; transparency (RGBA, LA,
    PA, P with a transparent colour) is composited onto white; CMYK, YCbCr, LAB, HSV, 1, L
    and palettes go through PIL's conversions."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        return _scale_wide(img)
    transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if transparent or (img.mode == "P" and "transparency" in img.info):
        try:
            rgba = img.convert("RGBA")
        except ValueError as exc:
            raise UnsupportedImage(f"image mode {img.mode} cannot be converted ({exc})") from None
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise UnsupportedImage(f"image mode {img.mode} cannot be converted ({exc})") from None


def _scale_wide(img: Image.Image) -> Image.Image:
    """Greyscale with more than 8 bits per pixel -> 8-bit RGB, scaled by the range in use."""
    import numpy as np

    x = np.asarray(img, dtype=np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1 and img.mode == "F":
        x = x * 255.0  # 0..1 floats
    elif lo >= 0 and hi <= 255:
        pass  # 8-bit values stored wide
    elif lo >= 0 and hi <= 65535:
        x = x / 257.0  # the 16-bit range, as 65535 -> 255
    else:  # anything else (negative or beyond 16 bits): stretch what is there
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    grey = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


# An object's repr holds its address ("<_io.BytesIO object at 0x7f...>"): it would make two
# identical ingests write different manifests.
_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def _reason(prefix: str, exc: BaseException) -> str:
    """A skip reason that names the error but no run-dependent detail (object addresses)."""
    message = _ADDRESS.sub(r"<\1>", str(exc)).strip()
    return (
        f"{prefix}: {type(exc).__name__}: {message}"
        if message
        else f"{prefix}: {type(exc).__name__}"
    )


def process_image(job: tuple[ImageRef, int, int | None]) -> tuple[bytes | None, str | None]:
    """Pool worker: (ref, size, max pixels) -> (jpeg, None) or (None, reason). Never raises."""
    ref, size, max_pixels = job
    try:
        data = read_bytes(ref)
    except FileNotFoundError:
        return None, "image file not found"
    except Exception as exc:  # unreadable file, bad HDF5 key...
        return None, _reason("image not readable", exc)
    try:
        jpeg, _ = normalise_image(data, size, max_pixels=max_pixels)
    except ImageTooLarge as exc:  # a decompression bomb: "image too large: W x H pixels ..."
        return None, str(exc)
    except UnsupportedImage as exc:
        return None, f"image not converted: {exc}"
    except Exception as exc:  # PIL raises many types for broken files
        return None, _reason("image not decodable", exc)
    return jpeg, None
