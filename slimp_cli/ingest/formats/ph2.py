"""PH2 (Mendonça et al. 2013): label table + `PH2 Dataset images/IMDxxx/...` folders.

Three table layouts are read into the same columns:
- the release's `PH2_dataset.txt`, a '||'-separated table followed by legend lines;
- a tab-separated table (Name, Clinical Diagnosis, Asymmetry, ...), as in shared/data;
- the release's `PH2_dataset.xlsx` (openpyxl), whose diagnosis and colour columns are X marks.
Rows whose Name is not `IMDnnn` (legends, blank lines) are ignored and counted in the notes.
Images: `IMDxxx.bmp` anywhere below the source (the dermoscopic image, not the masks).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ...core.errors import SlimpError
from .base import Adapter, SourceTable, find_table, folder_locator

NAME = re.compile(r"^IMD\d+$", re.IGNORECASE)
COLOURS = ("White", "Red", "Light-Brown", "Dark-Brown", "Blue-Gray", "Black")  # codes 1..6
DIAGNOSES = ("Common Nevus", "Atypical Nevus", "Melanoma")  # Clinical Diagnosis 0, 1, 2
# Header spellings seen in the releases -> the column names of slimp_cli/schemas/ph2.json.
ALIASES = {
    "image name": "Name",
    "name": "Name",
    "blue-whitish veil": "Blue-Whitish Veil",
    "blue whitish veil": "Blue-Whitish Veil",
    "dots/globules": "Dots/Globules",
}


def _canonical(name: str) -> str:
    name = " ".join(str(name).split())
    return ALIASES.get(name.lower(), name)


def read_pipe_table(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The '||' table: lines starting with '||' only; returns frame + 1-based row numbers."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if line.strip().startswith("||"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("||")])
    if not rows:
        raise SlimpError(f"{path}: no '||' table rows found")
    header = [_canonical(c) for c in rows[0]]
    body = [r + [""] * (len(header) - len(r)) for r in rows[1:]]
    return pd.DataFrame([r[: len(header)] for r in body], columns=header), list(
        range(1, len(body) + 1)
    )


def read_tab_table(path: Path) -> tuple[pd.DataFrame, list[int]]:
    lines = path.read_text(errors="replace").splitlines()
    if not lines:
        raise SlimpError(f"{path}: the table is empty")
    header = [_canonical(c) for c in lines[0].split("\t")]
    body = []
    for line in lines[1:]:
        cells = [c.strip().strip('"') for c in line.split("\t")]
        body.append((cells + [""] * len(header))[: len(header)])
    return pd.DataFrame(body, columns=header), list(range(1, len(body) + 1))


def read_xlsx_table(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The release's spreadsheet: a header row with 'Image Name', then a sub-header row."""
    import openpyxl

    try:
        sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
        grid = [
            ["" if v is None else str(v).strip() for v in row]
            for row in sheet.iter_rows(values_only=True)
        ]
    except Exception as exc:
        raise SlimpError(f"{path}: cannot read the spreadsheet ({exc})") from None
    start = next((i for i, r in enumerate(grid) if any(_canonical(c) == "Name" for c in r)), None)
    if start is None:
        raise SlimpError(f"{path}: no 'Image Name' header row found")
    top, sub = grid[start], grid[start + 1] if start + 1 < len(grid) else []
    names, current = [], ""
    for j, cell in enumerate(top):
        current = cell or current  # merged header cells repeat to the right
        below = sub[j] if j < len(sub) else ""
        names.append(_canonical(below if below and not NAME.match(below) else current))
    has_sub = any(c and not NAME.match(c) for c in sub)
    body = grid[start + (2 if has_sub else 1) :]
    frame = pd.DataFrame([(r + [""] * len(names))[: len(names)] for r in body], columns=names)
    frame = frame.loc[:, ~frame.columns.duplicated()] if frame.columns.duplicated().any() else frame
    if "Clinical Diagnosis" not in frame.columns and all(d in frame.columns for d in DIAGNOSES):
        marks = frame[list(DIAGNOSES)].apply(lambda col: col.str.strip().str.upper() == "X")
        frame["Clinical Diagnosis"] = [
            str(list(r).index(True)) if sum(r) == 1 else "" for r in marks.itertuples(index=False)
        ]
    for colour in COLOURS:
        if colour in frame.columns:
            frame[colour] = frame[colour].map(
                lambda v: "true" if v.strip().upper() == "X" else "false"
            )
    return frame, list(range(1, len(frame) + 1))


def expand_colours(frame: pd.DataFrame) -> pd.DataFrame:
    """'Colors' = '3 4' (codes 1..6) -> one boolean column per colour."""
    if "Colors" not in frame.columns:
        return frame
    codes = frame["Colors"].map(lambda v: set(re.findall(r"[1-6]", v)))
    for i, colour in enumerate(COLOURS, start=1):
        frame[colour] = [
            ("true" if str(i) in c else "false") if v.strip() else ""
            for c, v in zip(codes, frame["Colors"])
        ]
    return frame.drop(columns=["Colors"])


class Ph2(Adapter):
    name = "ph2"
    schema = "ph2"
    help = "PH2: PH2_dataset.txt ('||' or tab-separated) or PH2_dataset.xlsx + IMDxxx images"

    def read(self, source: Path, schema: dict) -> SourceTable:
        table = find_table(
            source,
            ("PH2_dataset.txt", "PH2_dataset.xlsx", "PH2 Dataset.txt", "PH2 Dataset.xlsx"),
            pattern="*.txt",
        )
        if table.suffix.lower() in (".xlsx", ".xlsm"):
            frame, rows = read_xlsx_table(table)
        elif any(
            line.lstrip().startswith("||")
            for line in table.read_text(errors="replace").splitlines()[:50]
        ):
            frame, rows = read_pipe_table(table)
        else:
            frame, rows = read_tab_table(table)
        frame = expand_colours(frame)
        if "Name" not in frame.columns:
            raise SlimpError(f"{table}: no 'Name' column (columns: {', '.join(frame.columns)})")
        keep = frame["Name"].str.strip().str.match(NAME)
        ignored = int((~keep).sum())
        notes = (
            [f"{ignored} non-image lines (legends, blank lines) of {table.name} ignored"]
            if ignored
            else []
        )
        frame = frame[keep].reset_index(drop=True)
        rows = [r for r, k in zip(rows, keep) if k]
        return SourceTable(
            frame=frame, path=table, rows=rows, locate=folder_locator(table.parent), notes=notes
        )
