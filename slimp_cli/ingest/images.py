"""Finding, decoding and normalising lesion images.

Resizing policy (docs/datasets.md): the shorter side is resized to `size` (bicubic, aspect
ratio kept), then the centre `size` x `size` square is cropped; the result is always RGB JPEG
quality 95, never the original size. EXIF orientation is applied first (smartphone photos).
Every image is fully decoded, so truncated or non-image files are caught here, not in training.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps

from ..transforms import resize_center

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
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.lower().endswith(IMAGE_EXTS) or name.startswith("."):
                    continue
                path = Path(dirpath) / name
                self.by_name.setdefault(name.lower(), []).append(path)
                self.by_stem.setdefault(Path(name).stem.lower(), []).append(path)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_name.values())

    def find(self, ref: str) -> Path | None:
        """The file for a table's image reference, or None when no candidate exists."""
        ref = ref.strip().replace("\\", "/")
        if not ref:
            return None
        for base in (self.root, *(self.root / d for d in self.subdirs)):
            candidate = base / ref
            if candidate.is_file():
                return candidate
        name = ref.rsplit("/", 1)[-1]
        hits = self.by_name.get(name.lower())
        if not hits:
            stem = name.rsplit(".", 1)[0] if "." in name else name
            hits = self.by_stem.get(stem.lower()) or self.by_stem.get(name.lower())
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


def normalise_image(data: bytes, size: int) -> tuple[bytes, tuple[int, int]]:
    """Decode fully, orient, convert to RGB, square-resize and re-encode as JPEG q95.

    Returns the JPEG bytes and the original (width, height). Raises on any unreadable,
    truncated or non-image input (PIL's errors, or ValueError for an empty file).
    """
    if not data:
        raise ValueError("empty file")
    img = Image.open(io.BytesIO(data))
    original = img.size
    if img.format == "JPEG":
        img.draft("RGB", (size, size))  # DCT-domain downscale: same result every run, much faster
    img.load()  # full decode: a truncated file raises here
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = resize_center(img, size)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    return out.getvalue(), original


def process_image(job: tuple[ImageRef, int]) -> tuple[bytes | None, str | None]:
    """Pool worker: (ref, size) -> (jpeg, None) or (None, reason). Never raises."""
    ref, size = job
    try:
        data = read_bytes(ref)
    except FileNotFoundError:
        return None, "image file not found"
    except Exception as exc:  # unreadable file, bad HDF5 key...
        return None, f"image not readable: {type(exc).__name__}: {exc}"
    try:
        jpeg, _ = normalise_image(data, size)
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"image not decodable: {type(exc).__name__}: {exc}"
    return jpeg, None
