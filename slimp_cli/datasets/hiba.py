"""HIBA (Hospital Italiano de Buenos Aires), as exported from the ISIC archive.

Layout: `metadata.csv` (ISIC archive columns: isic_id, patient_id, lesion_id, age_approx,
sex, anatom_site_general, diagnosis or diagnosis_1..5, clin_size_long_diam_mm, ...) + images
named `<isic_id>.jpg` anywhere below the source. Optional columns may be absent (the schema
marks them optional). Newer archive exports replace `diagnosis` by the hierarchical
`diagnosis_1..5`; the most specific filled level is then used as `diagnosis`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .base import Adapter, SourceTable, find_table, folder_locator, read_csv_strings, table_from_frame

# Hierarchical ISIC diagnosis columns, most specific first.
HIERARCHY = ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2")


def most_specific_diagnosis(frame: pd.DataFrame) -> pd.Series:
    """Per row, the deepest non-empty diagnosis_k (k >= 2); '' when none is filled."""
    out = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    for column in reversed(HIERARCHY):  # shallow first, deeper levels overwrite
        if column in frame.columns:
            filled = frame[column].str.len() > 0
            out[filled] = frame.loc[filled, column]
    return out


class Hiba(Adapter):
    name = "hiba"
    schema = "hiba"
    help = "HIBA / ISIC archive export: metadata.csv + <isic_id>.jpg images"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(source, ("metadata.csv",))
        frame = read_csv_strings(table)
        notes = []
        label = schema.get("label")
        if label and label not in frame.columns and any(c in frame.columns for c in HIERARCHY):
            frame[label] = most_specific_diagnosis(frame)
            notes.append(f"label '{label}' taken from the most specific of {', '.join(HIERARCHY)}")
        return table_from_frame(frame, table, folder_locator(table.parent), notes)
