"""HIBA (Hospital Italiano de Buenos Aires), as exported from the ISIC archive.

Layout: `metadata.csv` (ISIC archive columns: isic_id, patient_id, lesion_id, age_approx,
sex, anatom_site_general, diagnosis or diagnosis_1..5, clin_size_long_diam_mm, ...) + images
named `<isic_id>.jpg` anywhere below the source. Optional columns may be absent (the schema
marks them optional). Newer archive exports replace `diagnosis` by the hierarchical
`diagnosis_1..5`; `diagnosis` is then the most specific level whose value the schema's
`label_map` knows (subtypes such as "Basal cell carcinoma, Nodular" at level 4 fall back to
"Basal cell carcinoma" at level 3), else the most specific filled level.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .base import (
    Adapter,
    SourceTable,
    find_table,
    folder_locator,
    read_csv_strings,
    table_from_frame,
)

# Hierarchical ISIC diagnosis columns, most specific first.
HIERARCHY = ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2")


def most_specific_diagnosis(frame: pd.DataFrame, known: set[str] | None = None) -> pd.Series:
    """Per row, the deepest diagnosis_k (k >= 2) whose lower-cased value is in `known` (the
    label_map's keys), else the deepest non-empty one; '' when none is filled."""
    out = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    mapped = pd.Series(False, index=frame.index)
    for column in reversed(HIERARCHY):  # shallow first, deeper levels overwrite
        if column in frame.columns:
            filled = frame[column].str.len() > 0
            is_known = frame[column].str.strip().str.lower().isin(known or set())
            # a deeper level wins unless it is unknown while a shallower one was known
            take = filled & (is_known | ~mapped)
            out[take] = frame.loc[take, column]
            mapped = (mapped & ~take) | (take & is_known)
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
            known = {str(k).strip().lower() for k in (schema.get("label_map") or {})}
            frame[label] = most_specific_diagnosis(frame, known)
            notes.append(f"label '{label}' taken from the most specific of {', '.join(HIERARCHY)}")
        return table_from_frame(frame, table, folder_locator(table.parent), notes)
