"""Derm7pt (Kawahara et al. 2019): `meta.csv` (or `meta/meta.csv`) + `images/`.

Each case has a dermoscopic image (`derm`) and, when the file exists, a clinical image
(`clinic`) added as a second image of the same lesion. Cases have no patient ids: each case is
its own patient (schema: patient_id null, lesion_id case_num).

The official split. The release (`release_v0/meta/`) holds Kawahara's fixed split beside
meta.csv: `train_indexes.csv`, `valid_indexes.csv`, `test_indexes.csv` (413 / 203 / 395 cases),
each one column `indexes` of 0-based rows of meta.csv (read with `df.iloc[indexes]` by the
release's own code, so positions, not `case_num` values). When they are present, beside the
table or in `meta/` next to it, every case records its split (`SourceTable.row_splits`); the
three files must all be there and name every row of meta.csv exactly once.
"""

from __future__ import annotations

from pathlib import Path

from ...core.errors import SlimpError
from .base import (
    Adapter,
    SourceTable,
    csv_table,
    find_table,
    folder_locator,
    read_csv_strings,
)

# split name -> the release's index file (SM3 Sec. IV-A: 413 train, 203 valid, 395 test)
INDEX_FILES = {
    "train": "train_indexes.csv",
    "valid": "valid_indexes.csv",
    "test": "test_indexes.csv",
}
INDEX_COLUMN = "indexes"


class Derm7pt(Adapter):
    name = "derm7pt"
    schema = "derm7pt"
    help = "Derm7pt: meta.csv + images/<derm path> (clinical image added when present)"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("meta.csv", "meta/meta.csv"))
        root = table.parent.parent if table.parent.name == "meta" else table.parent
        # Paths in meta.csv are relative to images/; mixed-case names (NEL/Nel026.jpg) exist,
        # so the locator falls back to a case-insensitive name match.
        read = csv_table(table, folder_locator(root, subdirs=("images",)))
        files = find_index_files(table)
        if files is not None:
            n_rows = len(read_csv_strings(table))
            by_index = official_split(files, n_rows, table=table)
            read.row_splits = {i + 1: split for i, split in by_index.items()}  # 1-based rows
            counts = {s: sum(v == s for v in by_index.values()) for s in INDEX_FILES}
            read.notes.append(
                f"official split read from {', '.join(INDEX_FILES.values())} in "
                f"{files['train'].parent} ({', '.join(f'{counts[s]} {s}' for s in INDEX_FILES)} "
                "rows)"
            )
        return read


def find_index_files(table: Path) -> dict[str, Path] | None:
    """The release's three index files beside `table` or in `meta/` next to it (the first
    folder holding any of them); None when neither holds one. SlimpError when that folder has
    some but not all three (a split without its test part would be silently wrong)."""
    for folder in (table.parent, table.parent / "meta"):
        found = {s: folder / name for s, name in INDEX_FILES.items() if (folder / name).is_file()}
        if not found:
            continue
        missing = [INDEX_FILES[s] for s in INDEX_FILES if s not in found]
        if missing:
            raise SlimpError(
                f"{folder}: has {', '.join(p.name for p in found.values())} but not "
                f"{', '.join(missing)}; the official split needs all three index files "
                "(or none, to ingest without it)"
            )
        return found
    return None


def official_split(files: dict[str, Path], n_rows: int, *, table: Path) -> dict[int, str]:
    """0-based row of `table` -> "train" | "valid" | "test", from the index files.

    SlimpError (one line, naming the file) when a file has no `indexes` column, a value is not
    a row number, is out of range (0..n_rows-1), is listed twice, is in two files, or when
    some row of the table is in none."""
    owner: dict[int, str] = {}
    for split, path in files.items():
        frame = read_csv_strings(path)
        if INDEX_COLUMN not in frame.columns:
            raise SlimpError(
                f"{path}: no '{INDEX_COLUMN}' column (a Derm7pt index file has one column "
                f"'{INDEX_COLUMN}': 0-based rows of {table.name}); columns are: "
                f"{', '.join(frame.columns) or 'none'}"
            )
        for line, cell in enumerate(frame[INDEX_COLUMN].tolist(), start=2):
            try:
                index = int(cell)
            except ValueError:
                raise SlimpError(
                    f"{path}: line {line}: '{cell}' is not a row number of {table.name}"
                ) from None
            if not 0 <= index < n_rows:
                raise SlimpError(
                    f"{path}: line {line}: index {index} is out of range ({table} has "
                    f"{n_rows} rows, 0 to {n_rows - 1}); the index files belong to another "
                    "meta.csv"
                )
            if index in owner:
                where = (
                    f"listed twice in {path.name}"
                    if owner[index] == split
                    else f"in both {files[owner[index]].name} and {path.name}"
                )
                raise SlimpError(f"{path}: line {line}: index {index} is {where}")
            owner[index] = split
    if len(owner) < n_rows:
        first = min(set(range(n_rows)) - set(owner))
        raise SlimpError(
            f"{files['train'].parent}: the index files cover {len(owner)} of the {n_rows} rows "
            f"of {table} (row index {first} is in none); fix them, or move them away to ingest "
            "without the official split"
        )
    return owner
