"""Result tables you can paste: `probe --table FILE` and `retrieve --table FILE`.

A `ResultTable` is one row per result with the sizes it was measured on beside its numbers
(a held-out split of 28 rows must not look like one of 2,000):
- probe: method, split, features, label, low_shot, n (test rows), n_positive (malignant test
  rows; empty when the label has no malignant class), n_patients, then each metric's mean and
  `<metric>_std` over the seeds;
- retrieve: task, split, n_queries (the queries of that task: images for image_to_*, lesions
  for lesion_to_image, patients for patient_to_image and phenotype_to_patient), n_gallery,
  then each rank metric; `--pair-matching`: model and chance rows with n_queries.
`write_table(path, table)` writes it by the file's extension: `.csv` (full-precision numbers,
empty cells for missing values) or `.md` (a Markdown table, 3 decimals), atomically
(`paths.atomic_text`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import SlimpError
from ..core.paths import atomic_text

FORMATS = {".csv": "csv", ".md": "markdown"}
# The metrics of a probe table (and of the terminal's), by label kind.
PROBE_METRICS = {
    "binary": {"accuracy": "Acc", "balanced_accuracy": "BA", "f1": "F1", "auc": "AUC"},
    "multiclass": {
        "accuracy": "Acc",
        "balanced_accuracy": "BA",
        "f1_macro": "F1-macro",
        "f1_weighted": "F1-weighted",
        "auc": "AUC",
    },
}
RETRIEVAL_TASKS = (
    "image_to_lesion",
    "lesion_to_image",
    "image_to_patient",
    "patient_to_image",
    "phenotype_to_patient",
)
# (queries, gallery) of each retrieval task, as the report's counts name them
_SIDES = {
    "image_to_lesion": ("n_queries", "n_lesions"),
    "lesion_to_image": ("n_lesions", "n_queries"),
    "image_to_patient": ("n_queries", "n_patients"),
    "patient_to_image": ("n_patients", "n_queries"),
    "phenotype_to_patient": ("n_patients", "n_patients"),
}


@dataclass(frozen=True, kw_only=True)
class ResultTable:
    """`columns` (the CSV header) and `rows` of raw values (str, int, float or None)."""

    columns: list[str]
    rows: list[list]

    def __post_init__(self) -> None:
        if any(len(r) != len(self.columns) for r in self.rows):
            raise ValueError("every row needs one value per column")


def table_format(path: str | Path) -> str:
    """ "csv" or "markdown" by the extension of `path`; SlimpError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise SlimpError(f"{path}: give a .csv or .md file name (the format follows the extension)")
    return FORMATS[suffix]


def probe_metrics(label: str) -> dict[str, str]:
    """{metric key: short title} of a probe's table for `label`."""
    return PROBE_METRICS["multiclass" if label == "multiclass" else "binary"]


def probe_table(report: dict, *, label: str) -> ResultTable:
    """The table of a `run_probe` report (see the module docstring)."""
    metrics = probe_metrics(label)
    columns = ["method", "split", "features", "label", "low_shot", "n", "n_positive"]
    columns.append("n_patients")
    for m in metrics:
        columns += [m, f"{m}_std"]
    rows = []
    for r in report["results"]:
        feats = "+".join(r["features"]) + (f" ({r['pseudo']})" if r.get("pseudo") else "")
        row = [r["method"], r["split"], feats, r.get("label", label), r.get("low_shot")]
        row += [r.get("n"), r.get("n_positive"), r.get("n_patients")]
        for m in metrics:
            value = r["metrics"].get(m) or {}
            row += [value.get("mean"), value.get("std")]
        rows.append(row)
    return ResultTable(columns=columns, rows=rows)


def retrieve_table(report: dict) -> ResultTable:
    """The table of a `run_retrieval` report, or of `run_pair_matching`'s."""
    kind = (report.get("split") or {}).get("kind")
    if "pair_matching" in report:
        columns = ["rows", "split", "n_queries", "mean_rank", "Acc@1", "Acc@5"]
        pm = report["pair_matching"]
        rows = [
            [name, kind, pm.get("n"), *[r.get(k) for k in columns[3:]]]
            for name, r in (("model", pm), ("chance", report["chance"]))
        ]
        return ResultTable(columns=columns, rows=rows)
    tasks = [t for t in RETRIEVAL_TASKS if t in report]
    metrics = list(report[tasks[0]]) if tasks else []
    columns = ["task", "split", "n_queries", "n_gallery", *metrics]
    rows = []
    for t in tasks:
        queries, gallery = _SIDES[t]
        rows.append([t, kind, report[queries], report[gallery], *[report[t][m] for m in metrics]])
    return ResultTable(columns=columns, rows=rows)


def task_queries(report: dict, task: str) -> int:
    """How many queries the retrieval `task` of a report ranked."""
    return report[_SIDES[task][0]]


def write_table(path: str | Path, table: ResultTable) -> Path:
    """Write `table` to `path` as CSV or Markdown by its extension, atomically."""
    path = Path(path)
    fmt = table_format(path)
    with atomic_text(path) as fh:
        if fmt == "csv":
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(table.columns)
            writer.writerows([[_csv_cell(v) for v in row] for row in table.rows])
        else:
            fh.write(markdown(table))
    return path


def markdown(table: ResultTable) -> str:
    """A Markdown (GitHub) table: numbers right-aligned, 3 decimals, "-" for missing."""
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in table.rows)
        for i in range(len(table.columns))
    ]
    lines = [
        "| " + " | ".join(_md(c) for c in table.columns) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_md(_md_cell(v)) for v in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _csv_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _md_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
