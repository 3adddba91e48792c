"""Derm7pt (Kawahara et al. 2019): `meta.csv` (or `meta/meta.csv`) + `images/`.

Each case has a dermoscopic image (`derm`) and, when the file exists, a clinical image
(`clinic`) added as a second image of the same lesion. Cases have no patient ids: each case is
its own patient (schema: patient_id null, lesion_id case_num).
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Adapter,
    SourceTable,
    csv_table,
    find_table,
    folder_locator,
)


class Derm7pt(Adapter):
    name = "derm7pt"
    schema = "derm7pt"
    help = "Derm7pt: meta.csv + images/<derm path> (clinical image added when present)"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("meta.csv", "meta/meta.csv"))
        root = table.parent.parent if table.parent.name == "meta" else table.parent
        # Paths in meta.csv are relative to images/; mixed-case names (NEL/Nel026.jpg) exist,
        # so the locator falls back to a case-insensitive name match.
        return csv_table(table, folder_locator(root, subdirs=("images",)))
