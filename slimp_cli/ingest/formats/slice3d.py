"""SLICE-3D / ISIC 2024 challenge layout.

`train-metadata.csv` (or `test-metadata.csv` when there is no training table) and the images
either in `train-image.hdf5` / `test-image.hdf5` (one dataset per isic_id holding the encoded
JPEG bytes) or in a folder `train-image/image/<isic_id>.jpg`. The HDF5 file wins when both exist.
"""

from __future__ import annotations

from pathlib import Path

from ...core.errors import SlimpError
from ..images import ImageRef
from .base import (
    Adapter,
    SourceTable,
    csv_table,
    find_table,
    folder_locator,
)


class Slice3d(Adapter):
    name = "slice-3d"
    schema = "slice-3d"
    help = "SLICE-3D (ISIC 2024): train-metadata.csv + train-image.hdf5 (or image folder)"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("train-metadata.csv", "test-metadata.csv"))
        split = "test" if table.name.startswith("test") else "train"
        root = table.parent
        h5 = root / f"{split}-image.hdf5"
        if h5.is_file():
            return csv_table(table, Hdf5Locator(h5), [f"images read from {h5.name}"])
        return csv_table(table, folder_locator(root))


class Hdf5Locator:
    """A `locate` function answering from the names in an HDF5 file.

    The file stays open while the table is located (a lookup per reference, no set of 401,059
    names in memory) and `close()` shuts it before any worker process forks."""

    def __init__(self, path: Path) -> None:
        import h5py

        self._dataset = h5py.Dataset
        self.where = str(path)  # one string shared by every ImageRef
        try:
            self._handle = h5py.File(path, "r")
        except OSError as exc:
            raise SlimpError(f"{path}: not a readable HDF5 file ({exc})") from None

    def _has(self, key: str) -> bool:
        # Only top-level datasets: "a/b" would otherwise reach into a group.
        if not key or "/" in key or key in (".", ".."):
            return False
        return self._handle.get(key, getclass=True) is self._dataset

    def __call__(self, column: str, cell: str) -> ImageRef | None:
        if self._handle is None:
            raise RuntimeError("Hdf5Locator used after close()")
        key = cell.strip()
        if self._has(key):
            return ImageRef(self.where, key)
        stem = Path(key).stem  # a table that names files ('ISIC_x.jpg')
        return ImageRef(self.where, stem) if stem != key and self._has(stem) else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
