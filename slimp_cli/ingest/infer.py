"""`slimp schema infer`: draft a dataset schema from a table, for a person to confirm.

Guesses are marked: the draft carries a `_todo` list (ingest refuses a schema that still has
one) and each guessed role or level has a `_guess` note. Nothing here is trusted blindly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .formats.base import read_csv_strings
from .values import FALSE, TRUE, Unparseable, is_missing, parse_number

ROLE_PATTERNS = {
    "patient_id": re.compile(
        r"^(patient|subject|person)[ _-]?(id|num|number)?$|^pat(ient)?_?id$", re.I
    ),
    "lesion_id": re.compile(r"^lesion[ _-]?(id|num|number)?$", re.I),
    "image": re.compile(
        r"^(isic_id|image(_id|_name|_path|_file)?|img(_id|_name|_path)?|file(_name|name|path)?|path|derm)$",
        re.I,
    ),
    "label": re.compile(
        r"^(diagnosis|diagnostic|dx|label|target|class|benign_malignant|diagnosis_?[1-5]?)$", re.I
    ),
}
# Names that usually leak the label or are mere identifiers / free text.
LEAK = re.compile(
    r"biops|dx_type|confirm|management|histo|mel_thick|mitotic|iddx|malignan|benign", re.I
)
IDENT = re.compile(r"attribution|copyright|licen[cs]e|url|comment|note|^id$|_id$|uuid", re.I)
# A column of image file names (non-capturing group: pandas warns on match groups).
IMAGE_FILE = r"\.(?:jpe?g|png|bmp|tiff?)$"
MALIGNANT_WORDS = ("melanoma", "mel", "bcc", "scc", "carcinoma", "malignant", "1")


def guess_type(values: pd.Series) -> tuple[str | None, str]:
    """('numerical'|'boolean'|'categorical', why) or (None, why) for identifier-like columns."""
    present = [v for v in values if not is_missing(v)]
    if not present:
        return None, "always empty"
    distinct = {v.strip().lower() for v in present}
    if distinct <= (TRUE | FALSE) and len(distinct) <= 2:
        return "boolean", f"values {sorted(distinct)}"
    try:
        for v in present:
            parse_number(v)
        numeric = True
    except Unparseable:
        numeric = False
    if numeric:
        return (
            "numerical" if len(distinct) > 5 else "categorical"
        ), f"{len(distinct)} distinct numbers"
    if len(distinct) > max(30, 0.5 * len(present)):
        return (
            None,
            f"{len(distinct)} distinct values in {len(present)} rows: identifier or free text",
        )
    return "categorical", f"{len(distinct)} categories"


def _find_role(columns: list[str], role: str, taken: set[str]) -> str | None:
    for column in columns:
        if column not in taken and ROLE_PATTERNS[role].match(column):
            return column
    return None


def _constant_within(frame: pd.DataFrame, group: str, column: str) -> bool:
    """True when every patient with several rows has one value of `column` (patient-level)."""
    sizes = frame.groupby(group)[column].transform("size")
    multi = frame[sizes > 1]
    if multi.empty:
        return False
    return bool((multi.groupby(group)[column].nunique() <= 1).all())


def infer_schema(path: str | Path) -> dict:
    """A draft dataset schema for the table at `path` (see module doc)."""
    path = Path(path)
    frame = read_csv_strings(path, sep="\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    columns = list(frame.columns)
    roles: dict[str, str | None] = {}
    taken: set[str] = set()
    for role in ("patient_id", "lesion_id", "image", "label"):
        roles[role] = _find_role(columns, role, taken)
        if roles[role]:
            taken.add(roles[role])
    if roles["image"] is None:  # the column whose values look like file names
        for column in columns:
            if (
                column not in taken
                and frame[column].str.contains(IMAGE_FILE, case=False).mean() > 0.9
            ):
                roles["image"] = column
                taken.add(column)
                break
    todo = [
        "confirm every role below (patient_id, lesion_id, image, label) and the malignant classes",
        "confirm the level (patient vs lesion) and type of each feature",
        "check 'excluded': columns that leak the label must stay excluded",
        "then delete this '_todo' key; `slimp ingest csv` refuses a schema that still has it",
    ]
    classes: list[str] = []
    if roles["label"]:
        classes = sorted({v for v in frame[roles["label"]] if not is_missing(v)})
    malignant = [
        c
        for c in classes
        if any(w == c.lower() or (len(w) > 3 and w in c.lower()) for w in MALIGNANT_WORDS)
    ]
    patient_features, lesion_features, excluded = [], [], []
    for column in columns:
        if column in taken:
            continue
        if LEAK.search(column):
            excluded.append(
                {
                    "name": column,
                    "reason": "possible label leak (name suggests a diagnostic outcome); confirm",
                }
            )
            continue
        kind, why = guess_type(frame[column])
        if kind is None or IDENT.search(column):
            excluded.append({"name": column, "reason": f"identifier or free text ({why}); confirm"})
            continue
        feature = {"name": column, "type": kind, "_guess": why}
        if roles["patient_id"] and _constant_within(frame, roles["patient_id"], column):
            feature["_guess"] += "; constant within each patient -> patient level"
            patient_features.append(feature)
        else:
            lesion_features.append(feature)
    return {
        "_todo": todo,
        "name": path.stem,
        "patient_id": roles["patient_id"],
        "lesion_id": roles["lesion_id"],
        "image": roles["image"] or "TODO_IMAGE_COLUMN",
        "label": roles["label"],
        "_label_values": classes[:50],
        "malignant": malignant,
        "patient_features": patient_features,
        "lesion_features": lesion_features,
        "excluded": excluded,
    }
