"""`ingest()`: dataset files -> patient-grouped shards + schema.json + manifest.json.

adapter (read the release) -> rows (type, dedupe, locate) -> image pool (decode, verify,
resize, encode; ordered) -> ShardWriter (temporary names) -> commit: shards renamed, then
schema.json, then manifest.json with `complete: true` last, so an interrupted ingest never
leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import SlimpError
from ..paths import write_json
from ..schema import category_key, load_dataset_schema, numeric_stats, validate_dataset_schema
from ..shards import SHARD_GLOB, ShardWriter, image_entry_name, unique_keys, verify_shards
from .formats import get_adapter
from .images import process_image
from .rows import Entry, Log, build_entries

DERIVED = [{"name": "n_lesions", "type": "numerical"}]
# Warning kinds that --strict turns into errors (data was changed); notes are informational.
STRICT_WARNINGS = {"unparseable", "non_finite", "out_of_range", "undecodable"}
# --image-size: below, lesions are unrecognisable; above, one image takes gigabytes of memory.
IMAGE_SIZE_RANGE = (16, 4096)


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """What an ingest wrote: the folder, the manifest and the resolved schema (dicts)."""

    out: Path
    manifest: dict
    schema: dict


def load_schema_for(adapter, source: Path, schema: str | Path | dict | None) -> dict:
    """The dataset schema: the user's (file, built-in name or dict) or the adapter's default."""
    if isinstance(schema, dict):
        validate_dataset_schema(schema, source="schema")
        loaded = schema
    else:
        loaded = load_dataset_schema(
            schema if schema is not None else adapter.default_schema(source)
        )
    if "_todo" in loaded:
        raise SlimpError(
            "the schema still has a '_todo' note (drafted by `slimp schema infer`): confirm the guessed "
            "roles and types, then delete the '_todo' key"
        )
    return loaded


def resolve_feature(feature: dict, values: list) -> dict:
    """Resolved feature: missing rate, and mean/std (numerical) or sorted vocabulary."""
    present = [v for v in values if v is not None]
    out = {
        "name": feature["name"],
        "type": feature["type"],
        "missing_rate": round(1 - len(present) / len(values), 6) if values else 1.0,
    }
    if feature["type"] == "numerical":
        out["mean"], out["std"] = numeric_stats(present)
    elif feature["type"] == "boolean":
        out["vocab"] = ["false", "true"]
    else:
        out["vocab"] = sorted({category_key(v) for v in present})
    return out


def resolve_schema(
    dataset_schema: dict,
    *,
    patients: list[dict],
    lesions: list[dict],
    patient_features: list[dict],
    lesion_features: list[dict],
    has_patient_ids: bool,
    dropped: Iterable[dict] = (),
) -> dict:
    """The resolved schema (docs/internals.md) from the typed rows that went into the shards.

    patients: one dict per written patient, {"fields": {...}, "derived": {...}};
    lesions: one dict per written lesion entry (lesions.json items: label, fields...).
    """
    classes = sorted({e["label"] for e in lesions if e["label"] is not None})
    malignant = set(dataset_schema.get("malignant", []))
    malignant |= {e["label"] for e in lesions if e["malignant"] == 1}
    derived = DERIVED if has_patient_ids else []
    return {
        "format": "slimp-schema",
        "version": 1,
        "name": dataset_schema.get("name", "dataset"),
        "patient_id": dataset_schema.get("patient_id"),
        "lesion_id": dataset_schema.get("lesion_id"),
        "image": dataset_schema["image"],
        "label": dataset_schema.get("label"),
        "malignant": sorted(malignant),
        "classes": classes,
        "patient_features": [
            resolve_feature(f, [p["fields"].get(f["name"]) for p in patients])
            for f in patient_features
        ],
        "lesion_features": [
            resolve_feature(f, [e["fields"].get(f["name"]) for e in lesions])
            for f in lesion_features
        ],
        "derived_patient_features": [
            resolve_feature(f, [p["derived"].get(f["name"]) for p in patients]) for f in derived
        ],
        "excluded": list(dataset_schema.get("excluded", [])) + list(dropped),
    }


def _group(entries: list[Entry]) -> list[tuple[str, list[Entry]]]:
    """Patients sorted by id; each patient's images in table order."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.patient_id, []).append(e)
    return sorted(groups.items())


def _patient_fields(pid: str, entries: list[Entry], conflicts: dict[str, int]) -> dict:
    """First non-missing value of each patient field; disagreements are counted per column."""
    fields = {}
    for name in entries[0].patient_fields:
        values = [e.patient_fields[name] for e in entries if e.patient_fields[name] is not None]
        fields[name] = values[0] if values else None
        if len(set(map(str, values))) > 1:
            conflicts[name] = conflicts.get(name, 0) + 1
    return fields


def _existing_output(out: Path) -> list[Path]:
    return sorted(out.glob(SHARD_GLOB)) + [
        p for p in (out / "manifest.json", out / "schema.json") if p.exists()
    ]


def _results(jobs: list, workers: int) -> Iterator[tuple[bytes | None, str | None]]:
    """process_image over jobs, in job order (deterministic), in a pool when workers > 1."""
    if workers <= 1 or len(jobs) < 2:
        yield from map(process_image, jobs)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(
            process_image, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 8)))
        )


def _progress(enabled: bool, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
    return progress, progress.add_task("images", total=total)


def _strict_failure(log: Log) -> str | None:
    problems = [f"row {s['row']} ({s['id'] or s['file']}): {s['reason']}" for s in log.skipped]
    problems += [
        f"row {w['row']} column '{w['column']}': value '{w['value']}' {w['message']}"
        for w in log.warnings
        if w["kind"] in STRICT_WARNINGS
    ]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"--strict: {problems[0]}{more}; no shards written"


def ingest(
    fmt: str,
    source: str | Path,
    out: str | Path,
    *,
    schema: str | Path | dict | None = None,
    image_size: int = 256,
    workers: int = 1,
    max_shard_size: int = 10**9,
    max_patients_per_shard: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    check: bool = False,
    allow_outside: bool = False,
) -> IngestResult:
    """Ingest one dataset (`fmt` is a key of slimp_cli.datasets.FORMATS) into shards under `out`.

    `check` reads the written shards back and verifies counts and sha256 against the manifest.
    `allow_outside` reads image paths that are absolute or climb out of `source` (else those
    rows are skipped with the reason).

    Raises SlimpError for user errors (unknown format, bad schema, missing required column,
    empty table, output already ingested without `overwrite`, `strict` and any skip or value
    warning).
    """
    adapter = get_adapter(fmt)
    source, out = Path(source), Path(out)
    if not source.exists():
        raise SlimpError(f"{source}: no such file or folder")
    lo, hi = IMAGE_SIZE_RANGE
    if not lo <= image_size <= hi:
        raise SlimpError(f"--image-size must be between {lo} and {hi} pixels (got {image_size})")
    if max_shard_size < 1:
        raise SlimpError(f"--max-shard-size must be positive (got {max_shard_size})")
    if out.exists() and not out.is_dir():
        raise SlimpError(f"{out}: exists and is not a folder")
    previous = _existing_output(out) if out.is_dir() else []
    if previous and not overwrite:
        raise SlimpError(
            f"{out}: already holds an ingested dataset ({previous[0].name}); use --overwrite or another folder"
        )
    dataset_schema = load_schema_for(adapter, source, schema)
    table = adapter.read(source, dataset_schema)
    log = Log(notes=list(table.notes))
    root = source if source.is_dir() else source.parent
    entries, info = build_entries(
        table, dataset_schema, log, root=root, allow_outside=allow_outside
    )
    if strict and (message := _strict_failure(log)):
        raise SlimpError(message)
    if not entries:
        raise SlimpError(
            f"{table.path}: no usable rows ({len(log.skipped)} skipped; first: "
            f"{log.skipped[0]['reason'] if log.skipped else 'none'})"
        )

    groups = _group(entries)
    keys = unique_keys([pid for pid, _ in groups])
    jobs = [(e.ref, image_size) for _, members in groups for e in members]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission...
        raise SlimpError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SlimpError(f"{out}: the output folder is not writable")
    writer = ShardWriter(out, max_bytes=max_shard_size, max_patients=max_patients_per_shard)
    written_patients, written_lesions, conflicts = [], [], {}
    bar, task = _progress(progress, len(jobs))
    try:
        with (
            bar,
            contextlib.closing(_results(jobs, workers)) as results,
        ):  # closing: pool ends on errors too
            for pid, members in groups:
                kept, images = [], []
                for e in members:
                    jpeg, error = next(results)
                    bar.advance(task)
                    if error is not None:
                        log.skip(
                            row=e.row,
                            id=e.image_id,
                            file=e.ref.display(),
                            reason=error,
                            kind="missing_image" if "not found" in error else "bad_image",
                        )
                        if strict:
                            raise SlimpError(_strict_failure(log))
                        continue
                    kept.append(e)
                    images.append(jpeg)
                if not kept:
                    continue
                lesions = [
                    {
                        "lesion_id": e.lesion_id,
                        "image_id": e.image_id,
                        "image": image_entry_name(j, len(kept)),
                        "label": e.label,
                        "malignant": e.malignant,
                        "fields": e.lesion_fields,
                        "row": e.row,
                        "modality": e.modality,
                    }
                    for j, e in enumerate(kept)
                ]
                patient = {
                    "patient_id": pid,
                    "fields": _patient_fields(pid, kept, conflicts),
                    "derived": {"n_lesions": len({e.lesion_id for e in kept})},
                }
                writer.write(keys[pid], patient, lesions, images)
                written_patients.append(patient)
                written_lesions.extend(lesions)
        if not written_patients:
            raise SlimpError(
                f"{table.path}: no usable images ({len(log.skipped)} rows skipped; first: "
                f"{log.skipped[0]['reason']})"
            )
        for name, n in sorted(conflicts.items()):
            log.notes.append(
                f"patient field '{name}' differs between rows of {n} patients; first non-missing value kept"
            )
        modalities = modality_summary(written_lesions, info["modalities"])
        if modalities is not None and modalities["lesions_missing"]:
            missing = ", ".join(f"{m}: {n}" for m, n in modalities["lesions_missing"].items())
            log.notes.append(
                f"{len(modalities['missing'])} lesions lack an image of a declared modality "
                f"({missing}): kept with the images they have, flagged in manifest.json "
                "(modalities.missing); SM3 skips their cross-modal term"
            )
        resolved = resolve_schema(
            dataset_schema,
            patients=written_patients,
            lesions=written_lesions,
            patient_features=info["patient_features"],
            lesion_features=info["lesion_features"],
            has_patient_ids=info["roles"]["patient_id"] is not None,
            dropped=info["dropped"],
        )
        manifest = _manifest(
            fmt,
            source,
            table.path,
            out,
            image_size,
            max_shard_size,
            strict,
            written_patients,
            written_lesions,
            log,
            n_rows=len(table.frame),
        )
        if modalities is not None:
            manifest["modalities"] = modalities
        _commit(out, writer, resolved, manifest, previous)
    except BaseException:
        writer.abort()
        raise
    if check:
        verify_shards(out)
    return IngestResult(out=out, manifest=manifest, schema=resolved)


def modality_summary(lesions: list[dict], declared: list[str]) -> dict | None:
    """Images per modality and the lesions that lack a declared modality (None: none declared).

    `lesions` are lesions.json entries in shard order; a lesion is its `lesion_id` (unique in a
    dataset). Returns {"declared": [...], "images": {modality: n}, "lesions_complete": n,
    "lesions_missing": {modality: n}, "missing": [{"lesion_id", "row", "missing": [...]}]}.
    """
    if not declared:
        return None
    have: dict[str, set] = {}
    first_row: dict[str, int] = {}
    images = dict.fromkeys(declared, 0)
    for e in lesions:
        have.setdefault(e["lesion_id"], set())
        first_row.setdefault(e["lesion_id"], e["row"])
        if e.get("modality") is not None:
            have[e["lesion_id"]].add(e["modality"])
            images[e["modality"]] = images.get(e["modality"], 0) + 1
    missing = [
        {"lesion_id": lid, "row": first_row[lid], "missing": [m for m in declared if m not in got]}
        for lid, got in have.items()
        if any(m not in got for m in declared)
    ]
    per_modality = {m: sum(m in e["missing"] for e in missing) for m in declared}
    return {
        "declared": list(declared),
        "images": images,
        "lesions_complete": len(have) - len(missing),
        "lesions_missing": {m: n for m, n in per_modality.items() if n},
        "missing": missing,
    }


def _commit(
    out: Path, writer: ShardWriter, resolved: dict, manifest: dict, previous: list[Path]
) -> None:
    """Replace any previous dataset: old manifest first (never complete-looking), then rename."""
    old_manifest = out / "manifest.json"
    if old_manifest.exists():
        old_manifest.unlink()
    for path in previous:
        if path.exists() and path.name != "manifest.json":
            path.unlink()
    shards = writer.commit()
    manifest["shards"] = [s.__dict__ for s in shards]
    write_json(out / "schema.json", resolved)
    manifest["complete"] = True
    write_json(out / "manifest.json", manifest)


def _manifest(
    fmt,
    source,
    table_path,
    out,
    image_size,
    max_shard_size,
    strict,
    patients,
    lesions,
    log: Log,
    *,
    n_rows: int,
) -> dict:
    labels: dict[str, int] = {}
    for e in lesions:
        key = e["label"] if e["label"] is not None else "(none)"
        labels[key] = labels.get(key, 0) + 1
    skip_kinds: dict[str, int] = {}
    for s in log.skipped:
        skip_kinds[s["kind"]] = skip_kinds.get(s["kind"], 0) + 1
    return {
        "format": "slimp-manifest",
        "version": 1,
        "complete": False,
        "slimp_version": __version__,
        "source_format": fmt,
        "source": str(source),
        "table": str(table_path),
        "options": {
            "image_size": image_size,
            "max_shard_size": max_shard_size,
            "strict": strict,
            "resize": "shorter side to image_size (bicubic), centre crop, RGB JPEG q95",
        },
        "counts": {
            "rows": n_rows,
            "patients": len(patients),
            "lesions": len(lesions),
            # Lesion ids are unique across patients (conflicting rows were skipped).
            "unique_lesion_ids": len({e["lesion_id"] for e in lesions}),
            "images": len(lesions),
            "labels": dict(sorted(labels.items())),
            "malignant": sum(1 for e in lesions if e["malignant"] == 1),
            "benign": sum(1 for e in lesions if e["malignant"] == 0),
            "malignancy_unknown": sum(1 for e in lesions if e["malignant"] == -1),
            "skipped_rows": len({s["row"] for s in log.skipped}),
            "skipped_images": len(log.skipped),
            "skipped_by_kind": dict(sorted(skip_kinds.items())),
            "warnings": len(log.warnings),
        },
        "skipped": log.skipped,
        "warnings": log.warnings,
        "notes": log.notes,
        "shards": [],
    }
