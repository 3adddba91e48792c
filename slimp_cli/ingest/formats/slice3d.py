"""SLICE-3D / ISIC 2024 challenge layout.

`train-metadata.csv` (or `test-metadata.csv` when there is no training table) and the images
either in `train-image.hdf5` / `test-image.hdf5` (one dataset per isic_id holding the encoded
JPEG bytes) or in a folder `train-image/image/<isic_id>.jpg`. The HDF5 file wins when both exist.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SlimpError
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
            return csv_table(table, hdf5_locator(h5), [f"images read from {h5.name}"])
        return csv_table(table, folder_locator(root))


def hdf5_locator(path: Path):
    """A `locate` function answering from the keys of an HDF5 file (closed again at once)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:  # closed before any worker process forks
            keys = set(handle.keys())
    except OSError as exc:
        raise SlimpError(f"{path}: not a readable HDF5 file ({exc})") from None

    where = str(path)  # one string shared by every ImageRef (401,059 of them in SLICE-3D)

    def locate(column: str, cell: str) -> ImageRef | None:
        key = cell.strip()
        if key not in keys:
            key = Path(key).stem  # a table that names files ('ISIC_x.jpg')
        return ImageRef(where, key) if key in keys else None

    return locate
