"""Generic layout: any CSV/TSV table + an image folder + a user schema (`--schema PATH`).

Image references are resolved relative to the table's folder (or its `images/` subfolder),
then by file name or stem anywhere below it. The `synth` format is this layout with the
generated `schema.json` as default schema.
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
)


class CsvTable(Adapter):
    name = "csv"
    schema = None
    help = "any CSV/TSV table + image folder; needs --schema PATH (draft one with `slimp schema infer`)"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("metadata.csv",), pattern="*.csv")
        sep = "\t" if table.suffix.lower() in (".tsv", ".tab") else ","
        return csv_table(table, folder_locator(table.parent, subdirs=("images",)), sep=sep)

    def default_schema(self, source: Path):
        raise SlimpError(
            "format 'csv' needs --schema PATH (draft one with: slimp schema infer TABLE)"
        )


class SynthCohort(CsvTable):
    name = "synth"
    help = "a cohort written by `slimp synth` (csv layout; uses its schema.json)"

    def default_schema(self, source: Path):
        path = (
            Path(source) / "schema.json"
            if Path(source).is_dir()
            else Path(source).parent / "schema.json"
        )
        if not path.is_file():
            raise SlimpError(f"{path}: not found; is {source} a folder written by `slimp synth`?")
        return path
