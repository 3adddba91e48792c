"""From a SourceTable and its dataset schema to typed lesion entries (one per image).

Checks roles and columns, types feature cells, maps labels, removes duplicates and finds
image files. Every row that cannot be used becomes a `Skip`; every cell that cannot be typed
becomes missing plus a `Warning`. Nothing here decodes images (that is the pool's job).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import SlimpError
from .formats.base import SourceTable
from .images import ImageRef
from .rowstore import RowStore
from .values import (
    NonFinite,
    Unparseable,
    is_missing,
    is_undecodable,
    out_of_range,
    parse_category,
    parse_cell,
)


@dataclass(kw_only=True)
class Log:
    """Skipped rows and warnings, recorded in manifest.json."""

    skipped: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, *, row: int, id: str, file: str, reason: str, kind: str) -> None:
        self.skipped.append({"row": row, "id": id, "file": file, "reason": reason, "kind": kind})

    def warn(
        self, *, row: int, column: str, value: str, message: str, kind: str = "unparseable"
    ) -> None:
        self.warnings.append(
            {"row": row, "column": column, "value": value, "message": message, "kind": kind}
        )


@dataclass(kw_only=True, slots=True)
class Entry:
    """One image of one lesion, typed and located (kept pickled in a RowStore, not in memory)."""

    row: int  # 1-based data-row number in the source table
    patient_id: str
    lesion_id: str
    image_id: str
    ref: ImageRef
    label: str | None
    malignant: int  # 1, 0 or -1 (unknown)
    patient_values: tuple  # typed values of info["patient_features"], in that order
    lesion_values: tuple  # typed values of info["lesion_features"], in that order
    modality: str | None = None  # the schema's `modalities` of its image column (or None)


def label_lookup(schema: dict):
    """raw label cell -> class name (label_map applied; keys matched exactly, then loosely)."""
    mapping = {str(k): str(v) for k, v in (schema.get("label_map") or {}).items()}
    loose = {k.strip().lower(): v for k, v in mapping.items()}

    def lookup(cell: str) -> tuple[str | None, bool]:
        """(class or None when missing, whether a label_map was given and did not know it)."""
        if is_missing(cell):
            return None, False
        text = cell.strip()
        if not mapping:
            return text, False
        for key in (text, text.lower(), parse_category(text) or ""):
            if key in mapping:
                return mapping[key], False
            if key.lower() in loose:
                return loose[key.lower()], False
        return text, True

    return lookup


def malignancy(schema: dict):
    """class -> 1 (malignant), 0 (benign) or -1 (unknown: no label, or outside a given benign list)."""
    exact = {str(v) for v in schema.get("malignant", [])}
    contains = [str(s).lower() for s in schema.get("malignant_contains", [])]
    benign = {str(v) for v in schema["benign"]} if schema.get("benign") else None

    def classify(label: str | None) -> int:
        if label is None:
            return -1
        if label in exact or any(s in label.lower() for s in contains):
            return 1
        if benign is not None and label not in benign:
            return -1
        return 0

    return classify


def melanoma_classes(schema: dict, classes) -> list[str] | None:
    """The melanoma classes of the `melanoma` task: the schema's `melanoma` (exact) plus the
    `classes` that contain one of its `melanoma_contains`, sorted; None when the schema
    declares neither (the dataset then has no melanoma task)."""
    if "melanoma" not in schema and "melanoma_contains" not in schema:
        return None
    exact = {str(v) for v in schema.get("melanoma", [])}
    contains = [str(s).lower() for s in schema.get("melanoma_contains", [])]
    return sorted(exact | {c for c in classes if any(s in c.lower() for s in contains)})


def present_features(
    schema: dict, columns: list[str], table: Path, log: Log
) -> tuple[list[dict], list[dict], list[dict]]:
    """Patient and lesion features whose columns exist; missing required ones are an error.

    Returns (patient features, lesion features, dropped optional features with a reason).
    """
    kept: dict[str, list[dict]] = {"patient_features": [], "lesion_features": []}
    dropped: list[dict] = []
    for level in kept:
        for feature in schema.get(level, []):
            if feature["name"] in columns:
                kept[level].append(feature)
            elif feature.get("optional"):
                dropped.append(
                    {"name": feature["name"], "reason": "optional column absent from the table"}
                )
            else:
                raise SlimpError(
                    f"{table}: missing required column '{feature['name']}' ({level.split('_')[0]} feature); "
                    "mark it optional in the schema or fix the table"
                )
    if dropped:
        log.notes.append("optional columns absent: " + ", ".join(d["name"] for d in dropped))
    return kept["patient_features"], kept["lesion_features"], dropped


def check_roles(schema: dict, columns: list[str], table: Path, log: Log) -> dict:
    """Role columns actually used; missing image or patient id columns are an error."""
    roles = {}
    for role in ("image", "patient_id"):
        column = schema.get(role)
        if column is not None and column not in columns:
            raise SlimpError(
                f"{table}: missing required column '{column}' ({role}); columns are: {', '.join(columns)}"
            )
        roles[role] = column
    lesion = schema.get("lesion_id")
    if lesion is not None and lesion not in columns:
        log.notes.append(f"lesion id column '{lesion}' absent: each image is its own lesion")
        lesion = None
    roles["lesion_id"] = lesion
    label = schema.get("label")
    if label is not None and label not in columns:
        log.notes.append(f"label column '{label}' absent: the data is unlabelled (malignant = -1)")
        label = None
    roles["label"] = label
    return roles


def type_cell(cell: str, kind: str, feature: dict | None = None) -> tuple[object, str, str]:
    """(typed value, warning kind, message): kind "" when the cell is fine; otherwise the value
    is None (missing) and the message says why. Numbers must be finite and inside the
    feature's `min`/`max`; text must have been valid UTF-8."""
    if is_undecodable(cell):
        return (
            None,
            "undecodable",
            "is not valid UTF-8 text (a byte was undecodable); set to missing",
        )
    try:
        value = parse_cell(cell, kind)
    except NonFinite:
        return None, "non_finite", "is not a finite number (overflows a float); set to missing"
    except Unparseable:
        expected = "a number" if kind == "numerical" else "true/false"
        return None, "unparseable", f"not {expected}; set to missing"
    if kind == "numerical" and value is not None and feature is not None:
        why = out_of_range(value, feature)
        if why:
            return None, "out_of_range", f"is {why}; set to missing"
    return value, "", ""


def type_column(
    values: list[str],
    kind: str,
    column: str,
    rows: list[int],
    log: Log,
    *,
    feature: dict | None = None,
) -> list:
    """Typed values of one column; a cell that cannot be typed (or is out of the feature's
    range, or not finite, or not UTF-8) -> None + a warning naming row and value."""
    cache: dict[str, tuple[object, str, str]] = {}
    out = []
    for cell, row in zip(values, rows):
        if cell not in cache:
            cache[cell] = type_cell(cell, kind, feature)
        value, problem, message = cache[cell]
        if problem:
            log.warn(row=row, column=column, value=cell, message=message, kind=problem)
        out.append(value)
    return out


def build_entries(
    table: SourceTable,
    schema: dict,
    log: Log,
    *,
    store: RowStore,
    root: Path | None = None,
    allow_outside: bool = False,
) -> dict:
    """Typed, deduplicated, located entries into `store` (state 2) + what was resolved about
    the columns.

    Returns info: the used roles, the present features, the dropped optional features, the
    extra image columns and the table's row count. With `root` (the SOURCE folder), an image
    whose path is absolute or climbs out of it with ../ is only read with `allow_outside`;
    otherwise its row is skipped (kind "outside_source").
    """
    path, columns = table.path, table.columns
    chunks = table.chunks()
    first = next(chunks, None)
    if first is None or len(first[0]) == 0:
        raise SlimpError(f"{path}: the table has no data rows")
    roles = check_roles(schema, columns, path, log)
    patient_features, lesion_features, dropped = present_features(schema, columns, path, log)
    extra_columns = [c for c in schema.get("extra_images", []) if c in columns]
    modalities = dict(schema.get("modalities") or {})
    known = {v for v in roles.values() if v} | {
        f["name"] for f in patient_features + lesion_features
    }
    known |= {e["name"] for e in schema.get("excluded", [])} | set(extra_columns)
    unlisted = [c for c in columns if c not in known]
    if unlisted:
        log.notes.append("columns not in the schema, ignored: " + ", ".join(unlisted))

    reader = _RowReader(
        schema,
        roles,
        log,
        store=store,
        features=(patient_features, lesion_features),
        extra_columns=extra_columns,
        modalities=modalities,
    )
    n_rows, before = 0, len(log.warnings)
    store.begin()
    for frame, rows in itertools.chain([first], chunks):
        n_rows += len(frame)
        reader.read(frame, rows)
    store.commit()
    # Cell warnings column by column, as if the table were typed whole (whatever the chunking).
    order = {f["name"]: i for i, f in enumerate(patient_features + lesion_features)}
    log.warnings[before:] = sorted(log.warnings[before:], key=lambda w: order[w["column"]])
    if reader.unmapped:
        log.notes.append(
            "label values not in label_map, kept as is: "
            + ", ".join(f"{k} ({v} rows)" for k, v in sorted(reader.unmapped.items()))
        )
    if roles["patient_id"]:
        _drop_lesion_conflicts(store, log)
    _locate(store, table, roles["image"], log, root=root, allow_outside=allow_outside)
    return {
        "roles": roles,
        "patient_features": patient_features,
        "lesion_features": lesion_features,
        "dropped": dropped,
        "extra_images": extra_columns,
        "modalities": sorted(set(modalities.values())),
        "n_rows": n_rows,
    }


class _RowReader:
    """Turns chunks of the table into entries in the store, with the state that spans chunks
    (images seen, unmapped labels)."""

    def __init__(
        self,
        schema: dict,
        roles: dict,
        log: Log,
        *,
        store: RowStore,
        features: tuple[list[dict], list[dict]],
        extra_columns: list[str],
        modalities: dict,
    ) -> None:
        self.roles, self.log, self.store = roles, log, store
        self.patient_features, self.lesion_features = features
        self.extra_columns, self.modalities = extra_columns, modalities
        self.to_label, self.classify = label_lookup(schema), malignancy(schema)
        self.per_patient = schema.get("lesion_id_scope", "dataset") == "patient"
        self.unmapped: dict[str, int] = {}

    def _typed(self, frame, rows: list[int], features: list[dict]) -> list[tuple]:
        """Per row, the typed values of `features` (one column typed at a time)."""
        columns = [
            type_column(frame[f["name"]].tolist(), f["type"], f["name"], rows, self.log, feature=f)
            for f in features
        ]
        return list(zip(*columns)) if columns else [()] * len(rows)

    def read(self, frame, rows: list[int]) -> None:
        roles, log, store = self.roles, self.log, self.store
        patient_values = self._typed(frame, rows, self.patient_features)
        lesion_values = self._typed(frame, rows, self.lesion_features)
        images = frame[roles["image"]].tolist()
        patients = frame[roles["patient_id"]].tolist() if roles["patient_id"] else None
        lesions = frame[roles["lesion_id"]].tolist() if roles["lesion_id"] else None
        labels = frame[roles["label"]].tolist() if roles["label"] else None
        extras = {c: frame[c].tolist() for c in self.extra_columns}
        for i, row in enumerate(rows):
            image_id = images[i].strip()
            if not image_id:
                log.skip(
                    row=row,
                    id="",
                    file="",
                    reason=f"empty image reference ('{roles['image']}')",
                    kind="empty_id",
                )
                continue
            bad_text = [
                (role, cells[i])
                for role, cells in (
                    ("image", images),
                    ("patient_id", patients),
                    ("lesion_id", lesions),
                )
                if cells and is_undecodable(cells[i])
            ] + ([("label", labels[i])] if labels and is_undecodable(labels[i]) else [])
            if bad_text:  # an id or label with a replaced byte would be a wrong id or a new class
                role, cell = bad_text[0]
                log.skip(
                    row=row,
                    id=image_id,
                    file="",
                    kind="undecodable",
                    reason=f"'{roles[role]}' value '{cell}' is not valid UTF-8 text",
                )
                continue
            lesion_id = (lesions[i].strip() if lesions else "") or image_id
            patient_id = patients[i].strip() if patients else lesion_id
            if not patient_id:
                log.skip(
                    row=row,
                    id=image_id,
                    file="",
                    reason=f"empty patient id ('{roles['patient_id']}')",
                    kind="empty_id",
                )
                continue
            if self.per_patient and patients:
                lesion_id = f"{patient_id}/{lesion_id}"  # unique across the dataset from here on
            first_row = store.first("image", image_id, row)
            if first_row is not None:
                log.skip(
                    row=row,
                    id=image_id,
                    file="",
                    kind="duplicate_image",
                    reason=f"duplicate image reference (first at row {first_row})",
                )
                continue
            label, unknown = self.to_label(labels[i]) if labels else (None, False)
            if unknown:
                self.unmapped[label] = self.unmapped.get(label, 0) + 1
            entry = Entry(
                row=row,
                patient_id=patient_id,
                lesion_id=lesion_id,
                image_id=image_id,
                ref=_NO_REF,
                label=label,
                malignant=self.classify(label),
                patient_values=patient_values[i],
                lesion_values=lesion_values[i],
                modality=self.modalities.get(roles["image"]),
            )
            store.add(entry)
            for column, cells in extras.items():
                extra = cells[i].strip()
                if extra and not is_missing(extra):
                    store.add(
                        replace(
                            entry,
                            image_id=extra,
                            ref=ImageRef(f"\0{column}"),
                            modality=self.modalities.get(column),
                        )
                    )


_NO_REF = ImageRef("")


def _drop_lesion_conflicts(store: RowStore, log: Log) -> None:
    """A lesion id under two patients: we cannot tell which is right, so all its rows go."""
    bad = store.conflicting_lesions(1)
    if not bad:
        return
    dropped = store.lesion_rows(1, list(bad))
    for _, e in dropped:
        log.skip(
            row=e.row,
            id=e.image_id,
            file="",
            kind="lesion_conflict",
            reason=f"lesion id '{e.lesion_id}' appears under several patients ({', '.join(bad[e.lesion_id])})",
        )
    store.drop([seq for seq, _ in dropped])


def is_outside(path: str, root: Path) -> bool:
    """Whether `path` lies outside `root`, lexically (absolute, or ../ climbing out); a
    symlink inside SOURCE is inside: the user put it there."""
    path, base = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, base]) != base


def _locate(
    store: RowStore,
    table: SourceTable,
    image_column: str,
    log: Log,
    *,
    root: Path | None = None,
    allow_outside: bool = False,
) -> None:
    """Find each image; a missing main image skips the row, a missing extra image is noted.
    Images outside `root` are skipped (noted for extra images) unless `allow_outside`.
    Located entries move to state 2."""
    skipped_rows: set[int] = set()
    missing_extra: dict[str, int] = {}
    same_file: dict[str, int] = {}
    outside: dict[str, int] = {}
    located: list[tuple[int, Entry]] = []
    store.begin()
    for seq, e in store.entries(1):
        extra = e.ref.path.startswith("\0")
        column = e.ref.path[1:] if extra else image_column
        if extra and e.row in skipped_rows:
            continue
        ref = table.locate(column, e.image_id)
        if ref is not None and root is not None and is_outside(ref.path, root):
            outside[column] = outside.get(column, 0) + 1
            if not allow_outside:
                if not extra:
                    skipped_rows.add(e.row)
                log.skip(
                    row=e.row,
                    id=e.image_id,
                    file=e.image_id,
                    kind="outside_source",
                    reason=f"image path '{e.image_id}' is outside {root} (absolute or ../); "
                    "use --allow-outside to read it",
                )
                continue
        if ref is None:
            if extra:
                missing_extra[column] = missing_extra.get(column, 0) + 1
            else:
                skipped_rows.add(e.row)
                log.skip(
                    row=e.row,
                    id=e.image_id,
                    file=e.image_id,
                    kind="missing_image",
                    reason=f"image file not found for '{e.image_id}' under {table.path.parent}",
                )
            continue
        # one file under two spellings (dir/../x.png, an absolute path) is still one file
        key = os.path.abspath(ref.path) if ref.key is None else f"{ref.path}\0{ref.key}"
        first_row = store.first("file", key, e.row)
        if first_row is not None:
            if extra and first_row == e.row:  # the release names the main image twice
                same_file[column] = same_file.get(column, 0) + 1
                continue
            if not extra:
                skipped_rows.add(e.row)
            log.skip(
                row=e.row,
                id=e.image_id,
                file=ref.display(),
                kind="duplicate_image",
                reason=f"same image file as row {first_row}",
            )
            continue
        e.ref = ref
        located.append((seq, e))
        if len(located) >= 2000:
            store.promote(located)
            located = []
    store.promote(located)
    store.commit()
    for column, n in missing_extra.items():
        log.notes.append(
            f"{n} optional '{column}' images not found; those lesions keep their main image only"
        )
    for column, n in sorted(outside.items()):
        if allow_outside:
            log.notes.append(f"{n} '{column}' images read from outside {root} (--allow-outside)")
    for column, n in same_file.items():
        log.notes.append(
            f"{n} optional '{column}' images are the row's main image file; not added twice"
        )
