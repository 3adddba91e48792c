"""`ingest()`: dataset files -> patient-grouped shards + schema.json + manifest.json.

adapter (read the release) -> rows (type, dedupe, locate) -> image pool (decode, verify,
resize, encode; ordered) -> ShardWriter (temporary names) -> commit: shards renamed, then
schema.json, then manifest.json with `complete: true` last, so an interrupted ingest never
leaves a folder that looks complete. One ingest per OUT at a time (`paths.output_lock`); without
`overwrite` every rename into OUT fails if the name appeared meanwhile; a full disk (shards, the
SQLite row store, scratch files) is one line and every temporary is removed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..core.errors import SlimpError
from ..core.paths import NO_SPACE, atomic_text, clean_stale, output_lock, write_error, write_json
from ..data.image_io import CURRENT_LIMIT
from ..data.image_io import max_image_pixels as current_pixel_limit
from ..data.schema import load_dataset_schema, validate_dataset_schema
from ..data.shards import SHARD_GLOB, ShardWriter, image_entry_name, unique_keys, verify_shards
from .formats import get_adapter
from .images import process_image
from .rows import Entry, Log, build_entries, melanoma_classes
from .rowstore import RowStore
from .summary import WrittenSummary

DERIVED = [{"name": "n_lesions", "type": "numerical"}]
# Warning kinds that --strict turns into errors (data was changed); notes are informational.
STRICT_WARNINGS = {"unparseable", "non_finite", "out_of_range", "undecodable"}
# --image-size: below, lesions are unrecognisable; above, one image takes gigabytes of memory.
IMAGE_SIZE_RANGE = (16, 4096)
# Images decoded ahead of the shard writer, per worker (bounds memory, keeps workers busy).
WINDOW_PER_WORKER = 64
INDEX = "index.json"


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


def resolve_schema(
    dataset_schema: dict, summary: WrittenSummary, *, dropped: Iterable[dict] = ()
) -> dict:
    """The resolved schema (docs/internals.md) from what went into the shards."""
    malignant = set(dataset_schema.get("malignant", [])) | summary.malignant_labels
    melanoma = melanoma_classes(dataset_schema, summary.classes)
    return {
        "format": "slimp-schema",
        "version": 1,
        "name": dataset_schema.get("name", "dataset"),
        "patient_id": dataset_schema.get("patient_id"),
        "lesion_id": dataset_schema.get("lesion_id"),
        "image": dataset_schema["image"],
        "label": dataset_schema.get("label"),
        "malignant": sorted(malignant),
        # the `melanoma` task's classes (SM3's DIAG MEL), only where the schema declares them
        **({"melanoma": melanoma} if melanoma is not None else {}),
        "classes": sorted(summary.classes),
        "patient_features": [f.resolved() for f in summary.patient],
        "lesion_features": [f.resolved() for f in summary.lesion],
        "derived_patient_features": [f.resolved() for f in summary.derived],
        "excluded": list(dataset_schema.get("excluded", [])) + list(dropped),
    }


def _patient_fields(names: list[str], entries: list[Entry], conflicts: dict[str, int]) -> dict:
    """First non-missing value of each patient field; disagreements are counted per column."""
    fields = {}
    for j, name in enumerate(names):
        values = [e.patient_values[j] for e in entries if e.patient_values[j] is not None]
        fields[name] = values[0] if values else None
        if len(set(map(str, values))) > 1:
            conflicts[name] = conflicts.get(name, 0) + 1
    return fields


def _existing_output(out: Path) -> list[Path]:
    return sorted(out.glob(SHARD_GLOB)) + [
        p for p in (out / "manifest.json", out / "schema.json", out / INDEX) if p.exists()
    ]


def _results(jobs: Iterable, workers: int, total: int) -> Iterator[tuple[bytes | None, str | None]]:
    """process_image over jobs, in job order (deterministic), in a pool when workers > 1.

    At most WINDOW_PER_WORKER results per worker are decoded ahead of the writer, so memory
    stays flat when the disk is slower than the decoders."""
    if workers <= 1 or total < 2:
        yield from map(process_image, jobs)
        return
    chunksize = max(1, min(16, total // (workers * 8)))
    slots = threading.BoundedSemaphore(max(4 * chunksize, WINDOW_PER_WORKER) * workers)
    stop = threading.Event()

    def throttled():  # runs in the pool's task thread; must end when the pool is torn down
        for job in jobs:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            yield job

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(workers) as pool:
        try:
            for result in pool.imap(process_image, throttled(), chunksize=chunksize):
                slots.release()
                yield result
        finally:
            stop.set()  # before the pool's exit joins the task thread


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
    max_image_pixels=CURRENT_LIMIT,
) -> IngestResult:
    """Ingest one dataset (`fmt` is a key of slimp_cli.datasets.FORMATS) into shards under `out`.

    `check` reads the written shards back and verifies counts and sha256 against the manifest.
    `allow_outside` reads image paths that are absolute or climb out of `source` (else those
    rows are skipped with the reason). `max_image_pixels`: images with more pixels are skipped
    ("image too large: W x H pixels"; default the current limit, None no limit).

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
    if max_patients_per_shard is not None and max_patients_per_shard < 1:
        raise SlimpError(f"--max-patients-per-shard must be >= 1 (got {max_patients_per_shard})")
    if out.exists() and not out.is_dir():
        raise SlimpError(f"{out}: exists and is not a folder")
    limit = current_pixel_limit() if max_image_pixels is CURRENT_LIMIT else max_image_pixels or None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # the lock file goes beside OUT
    except OSError as exc:  # a parent is a file, no permission...
        raise SlimpError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    with output_lock(out, contents=True):  # one ingest per OUT; its files take no lock of theirs
        previous = _existing_output(out) if out.is_dir() else []
        if previous and not overwrite:
            raise SlimpError(
                f"{out}: already holds an ingested dataset ({previous[0].name}); use --overwrite or another folder"
            )
        if out.is_dir():
            clean_stale(out)  # shards and files of an ingest that was killed
        clean_stale(_scratch_folder(out), scratch_only=True)
        created = not out.exists()
        try:
            return _ingest(
                adapter,
                source,
                out,
                schema=schema,
                previous=previous,
                image_size=image_size,
                workers=workers,
                max_shard_size=max_shard_size,
                max_patients_per_shard=max_patients_per_shard,
                strict=strict,
                overwrite=overwrite,
                progress=progress,
                check=check,
                allow_outside=allow_outside,
                limit=limit,
                fmt=fmt,
            )
        except sqlite3.Error as exc:  # the row store: a full disk...
            raise _scratch_error(exc, _scratch_folder(out)) from None
        except OSError as exc:
            if exc.errno in NO_SPACE or exc.filename is None:
                raise write_error(exc, exc.filename or out) from None
            raise
        finally:
            if created:  # a failed ingest leaves no empty OUT behind
                with contextlib.suppress(OSError):
                    out.rmdir()


def _scratch_error(exc: sqlite3.Error, folder: Path) -> SlimpError:
    """One line for a failure of the SQLite scratch files; SQLite reports a file-size limit
    (EFBIG) as a plain write error, told apart here by the limit itself."""
    import errno
    import resource

    name = getattr(exc, "sqlite_errorname", "")
    full = name == "SQLITE_FULL"
    if name.startswith("SQLITE_IOERR"):
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        with contextlib.suppress(OSError):
            st = os.statvfs(folder)
            full = st.f_bavail * st.f_frsize < (1 << 20)
        full = full or limit != resource.RLIM_INFINITY
    if full:
        return write_error(OSError(errno.ENOSPC, "No space left on device"), folder)
    return SlimpError(f"{folder}: cannot write ingest's scratch files ({exc})")


def _ingest(
    adapter,
    source: Path,
    out: Path,
    *,
    schema,
    previous: list[Path],
    image_size: int,
    workers: int,
    max_shard_size: int,
    max_patients_per_shard: int | None,
    strict: bool,
    overwrite: bool,
    progress: bool,
    check: bool,
    allow_outside: bool,
    limit: int | None,
    fmt: str,
) -> IngestResult:
    """`ingest` under OUT's lock."""
    dataset_schema = load_schema_for(adapter, source, schema)
    table = adapter.read(source, dataset_schema)
    log = Log(notes=list(table.notes))
    store = RowStore(_scratch_folder(out))
    try:
        info = build_entries(
            table,
            dataset_schema,
            log,
            store=store,
            root=source if source.is_dir() else source.parent,
            allow_outside=allow_outside,
        )
        table.close()  # before the pool forks
        if strict and (message := _strict_failure(log)):
            raise SlimpError(message)
        patients = store.patients()
        if not patients:
            raise SlimpError(
                f"{table.path}: no usable rows ({len(log.skipped)} skipped; first: "
                f"{log.skipped[0]['reason'] if log.skipped else 'none'})"
            )
        manifest, resolved = _write(
            store,
            patients,
            info,
            log,
            out=out,
            dataset_schema=dataset_schema,
            previous=previous,
            image_size=image_size,
            workers=workers,
            strict=strict,
            progress=progress,
            max_shard_size=max_shard_size,
            max_patients_per_shard=max_patients_per_shard,
            about=(fmt, source, table.path),
            row_splits=table.row_splits,
            limit=limit,
            overwrite=overwrite,
        )
    finally:
        table.close()
        store.close()
    if check:
        verify_shards(out)
    return IngestResult(out=out, manifest=manifest, schema=resolved)


def _scratch_folder(out: Path) -> Path:
    """Where the row store goes: beside the output (space is there; /tmp may be RAM)."""
    folder = out
    while not folder.is_dir():
        folder = folder.parent
    return folder


def _write(
    store: RowStore,
    patients: list[tuple[str, int]],
    info: dict,
    log: Log,
    *,
    out: Path,
    dataset_schema: dict,
    previous: list[Path],
    image_size: int,
    workers: int,
    strict: bool,
    progress: bool,
    max_shard_size: int,
    max_patients_per_shard: int | None,
    about: tuple,
    row_splits: dict[int, str] | None = None,
    limit: int | None,
    overwrite: bool,
) -> tuple[dict, dict]:
    """Decode, write and commit the located entries, patient by patient; (manifest, schema).

    `row_splits` (1-based source row -> official split) becomes each lesion's `official_split`
    field and the manifest's `counts.official_split` (lesions per split)."""
    fmt, source, table_path = about
    keys = unique_keys([pid for pid, _ in patients])
    total = sum(n for _, n in patients)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission...
        raise SlimpError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SlimpError(f"{out}: the output folder is not writable")
    writer = ShardWriter(out, max_bytes=max_shard_size, max_patients=max_patients_per_shard)
    summary = WrittenSummary(
        patient_features=info["patient_features"],
        lesion_features=info["lesion_features"],
        derived=DERIVED if info["roles"]["patient_id"] is not None else [],
        modalities=info["modalities"],
        folder=os.path.dirname(store.path),
    )
    names = (
        [f["name"] for f in info["patient_features"]],
        [f["name"] for f in info["lesion_features"]],
    )
    conflicts: dict[str, int] = {}
    official: dict[str, str] = {}  # lesion id -> its official split (datasets that have one)
    bar, task = _progress(progress, total)
    # Two streams of the same order: the pool's task thread reads one, the writer the other.
    jobs = ((e.ref, image_size, limit) for e in store.grouped())
    entries = store.grouped()
    try:
        with (
            bar,
            contextlib.closing(entries),
            contextlib.closing(_results(jobs, workers, total)) as results,
        ):  # closing: pool ends on errors too
            for pid, n in patients:
                members = [next(entries) for _ in range(n)]
                kept, images = _decoded(members, results, log, strict, lambda: bar.advance(task))
                if kept:
                    splits = None
                    if row_splits is not None:
                        splits = [row_splits[e.row] for e in kept]
                        official.update((e.lesion_id, s) for e, s in zip(kept, splits))
                    _write_patient(
                        writer, summary, keys[pid], pid, kept, images, conflicts, names, splits
                    )
        if not summary.patients:
            raise SlimpError(
                f"{table_path}: no usable images ({len(log.skipped)} rows skipped; first: "
                f"{log.skipped[0]['reason']})"
            )
        for name, n in sorted(conflicts.items()):
            log.notes.append(
                f"patient field '{name}' differs between rows of {n} patients; first non-missing value kept"
            )
        modalities = summary.modality_summary()
        if modalities is not None and modalities["lesions_missing"]:
            missing = ", ".join(f"{m}: {n}" for m, n in modalities["lesions_missing"].items())
            log.notes.append(
                f"{len(modalities['missing'])} lesions lack an image of a declared modality "
                f"({missing}): kept with the images they have, flagged in manifest.json "
                "(modalities.missing); SM3 skips their cross-modal term"
            )
        resolved = resolve_schema(dataset_schema, summary, dropped=info["dropped"])
        manifest = _manifest(
            fmt,
            source,
            table_path,
            out,
            image_size,
            max_shard_size,
            strict,
            summary,
            log,
            n_rows=info["n_rows"],
        )
        if modalities is not None:
            manifest["modalities"] = modalities
        if row_splits is not None:
            manifest["counts"]["official_split"] = {
                s: sum(v == s for v in official.values()) for s in ("train", "valid", "test")
            }
        _commit(out, writer, resolved, manifest, previous, summary.write_index, overwrite)
    except BaseException:
        writer.abort()
        raise
    finally:
        summary.close()
    return manifest, resolved


def _decoded(members: list[Entry], results, log: Log, strict: bool, advance):
    """The next len(members) decoded images: (entries kept, their JPEG bytes); failures are
    recorded skips (an error under --strict)."""
    kept, images = [], []
    for e in members:
        jpeg, error = next(results)
        advance()
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
    return kept, images


def _write_patient(writer, summary, key, pid, kept, images, conflicts, names, splits=None) -> None:
    patient_names, lesion_names = names
    lesions = [
        {
            "lesion_id": e.lesion_id,
            "image_id": e.image_id,
            "image": image_entry_name(j, len(kept)),
            "label": e.label,
            "malignant": e.malignant,
            "fields": dict(zip(lesion_names, e.lesion_values)),
            "row": e.row,
            "modality": e.modality,
        }
        for j, e in enumerate(kept)
    ]
    if splits is not None:  # the release's own split (Derm7pt's index files)
        for lesion, split in zip(lesions, splits):
            lesion["official_split"] = split
    patient = {
        "patient_id": pid,
        "fields": _patient_fields(patient_names, kept, conflicts),
        "derived": {"n_lesions": len({e.lesion_id for e in kept})},
    }
    shard = writer.write(key, patient, lesions, images)
    summary.add(key, shard, patient, lesions)


def _commit(
    out: Path,
    writer: ShardWriter,
    resolved: dict,
    manifest: dict,
    previous: list[Path],
    write_index,
    overwrite: bool,
) -> None:
    """Replace any previous dataset: old manifest first (never complete-looking), then rename;
    manifest.json (`complete: true`) is written last. Without `overwrite` every rename fails
    if its name appeared meanwhile; on any failure this ingest's files are removed again
    (`writer.abort()` removes the shards)."""
    old_manifest = out / "manifest.json"
    if old_manifest.exists():
        old_manifest.unlink()
    for path in previous:
        if path.exists() and path.name != "manifest.json":
            path.unlink()
    shards = writer.commit(overwrite=overwrite)
    manifest["shards"] = [s.__dict__ for s in shards]
    written = []
    try:
        write_json(out / "schema.json", resolved, overwrite=overwrite)
        written.append(out / "schema.json")
        with atomic_text(out / INDEX, overwrite=overwrite) as handle:
            write_index(handle)
        written.append(out / INDEX)
        manifest["complete"] = True
        write_json(out / "manifest.json", manifest, overwrite=overwrite)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _manifest(
    fmt,
    source,
    table_path,
    out,
    image_size,
    max_shard_size,
    strict,
    summary: WrittenSummary,
    log: Log,
    *,
    n_rows: int,
) -> dict:
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
            **summary.counts(),
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
