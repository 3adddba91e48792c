"""CLI: `slimp ingest`, `slimp synth` and `slimp schema infer` (thin wrappers over the library)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

schema_app = typer.Typer(help="Dataset schemas: draft one for a new table.", no_args_is_help=True)

# PIL's decompression-bomb limit (slimp_cli.data.image_io.open_image), shared by every command that
# opens images (ingest, embed, encode).
MAX_IMAGE_PIXELS_HELP = (
    "Refuse images of more pixels (width x height) than this: 'image too large: W x H pixels' "
    "instead of decoding a decompression bomb (default: PIL's 89,478,485; 0 = no limit)."
)


def apply_max_image_pixels(value: int | None) -> None:
    """Set `--max-image-pixels` for this process (and the workers it forks)."""
    if value is not None:
        from ..data.image_io import set_max_image_pixels

        set_max_image_pixels(value)


def _formats_help() -> str:
    from ..ingest import FORMATS

    return "; ".join(f"{name}: {a.help}" for name, a in FORMATS.items())


def _summary(result, console: Console) -> None:
    counts = result.manifest["counts"]
    console.print(
        f"[bold]ingested[/bold] {counts['patients']} patients, {counts['lesions']} images "
        f"({counts['unique_lesion_ids']} lesions), {counts['malignant']} malignant, "
        f"{len(result.manifest['shards'])} shard(s)"
    )
    console.print(f"wrote {result.out}/shard-*.tar, schema.json, manifest.json")
    console.print(f"labels: {', '.join(f'{k} {v}' for k, v in counts['labels'].items())}")
    if result.manifest["skipped"]:
        table = Table(title=f"{len(result.manifest['skipped'])} skipped (details in manifest.json)")
        table.add_column("reason")
        table.add_column("count", justify="right")
        table.add_column("first example")
        by_kind: dict[str, list[dict]] = {}
        for s in result.manifest["skipped"]:
            by_kind.setdefault(s["kind"], []).append(s)
        for kind, items in sorted(by_kind.items()):
            first = items[0]
            table.add_row(
                kind, str(len(items)), f"row {first['row']} {first['id']}: {first['reason']}"
            )
        console.print(table)
    if result.manifest["warnings"]:
        w = result.manifest["warnings"][0]
        console.print(
            f"[yellow]{len(result.manifest['warnings'])} value warning(s)[/yellow] (set to missing), e.g. "
            f"row {w['row']} column '{w['column']}': '{w['value']}'"
        )
    for note in result.manifest["notes"]:
        console.print(f"note: {note}")


def ingest_command(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="Dataset layout. " + _formats_help()),
    source: Path = typer.Argument(
        ..., metavar="SOURCE", help="The dataset folder (or its metadata table)."
    ),
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Output folder for shard-*.tar, schema.json and manifest.json."
    ),
    schema: Path | None = typer.Option(
        None,
        "--schema",
        help="Dataset schema JSON (default: the format's built-in schema; required for csv).",
    ),
    image_size: int = typer.Option(
        256,
        "--image-size",
        min=1,
        help="Side in pixels of the images stored in the shards: shorter side resized to it, "
        "then centre-cropped square (JPEG q95). Keep it >= the model's --input-size.",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        show_default="all CPU cores",
        help="Worker processes decoding and resizing images (0 = none: the main process "
        "does it). The shards do not depend on it.",
    ),
    max_shard_size: int = typer.Option(
        10**9, "--max-shard-size", help="Maximum bytes per shard (a patient is never split)."
    ),
    max_patients_per_shard: int | None = typer.Option(
        None, "--max-patients-per-shard", min=1, help="Also cap the patients per shard (>= 1)."
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Any skipped row or unparseable value is an error; no shards are left behind.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing ingested dataset in OUT."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Read the written shards back and check their counts and sha256 against manifest.json.",
    ),
    allow_outside: bool = typer.Option(
        False,
        "--allow-outside",
        help="Read image paths that are absolute or climb out of SOURCE with ../ "
        "(by default such rows are skipped, with the reason in manifest.json).",
    ),
    max_image_pixels: int | None = typer.Option(
        None,
        "--max-image-pixels",
        min=0,
        help=MAX_IMAGE_PIXELS_HELP + " Larger images are skipped.",
    ),
) -> None:
    """Turn a skin-lesion dataset into patient-grouped WebDataset shards + schema.json + manifest.json."""
    from ..ingest import ingest

    apply_max_image_pixels(max_image_pixels)

    result = ingest(
        fmt,
        source,
        out,
        schema=schema,
        image_size=image_size,
        workers=(os.cpu_count() or 1) if workers is None else workers,
        max_shard_size=max_shard_size,
        max_patients_per_shard=max_patients_per_shard,
        strict=strict,
        overwrite=overwrite,
        check=check,
        allow_outside=allow_outside,
        progress=True,
    )
    _summary(result, Console())
    if check:
        Console().print("check: every shard's counts and sha256 match manifest.json")


def verify_command(
    data: Path = typer.Argument(..., metavar="DATA", help="A folder written by slimp ingest."),
) -> None:
    """Check every shard of an ingested folder against manifest.json (counts, size, sha256).

    Exit status 1 with one line naming the first shard that differs."""
    from ..data.shards import verify_shards

    r = verify_shards(data)
    typer.echo(
        f"ok: {r['shards']} shard(s), {r['patients']} patients, {r['images']} images match "
        f"{data / 'manifest.json'} (counts, sizes, sha256)"
    )


def synth_command(
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Output folder (metadata.csv, images/, schema.json)."
    ),
    patients: int = typer.Option(
        200, "--patients", help="Number of generated patients (1-10 lesions each)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    image_size: int = typer.Option(
        64, "--image-size", help="Side of the generated square images in pixels."
    ),
    paired: bool = typer.Option(
        False,
        "--paired",
        help="A Derm7pt-like paired cohort instead: one case per patient, a dermoscopic and a "
        "clinical image per case (5% of clinical files missing), seven-point criteria in the "
        "metadata; for SM3 (pretrain --method sm3). --patients is then the number of cases.",
    ),
) -> None:
    """Generate a synthetic cohort whose images follow their metadata (ingest it with `slimp ingest synth`)."""
    if paired:
        from ..ingest.synth_paired import generate_paired_cohort

        p = generate_paired_cohort(out, cases=patients, seed=seed, image_size=image_size)
        Console().print(
            f"[bold]generated[/bold] {p.cases} paired cases, {p.images} images "
            f"({p.missing_clinical} clinical images missing, {p.malignant} melanomas) -> "
            f"{p.out}\nnext: slimp ingest synth {p.out} SHARDS"
        )
        return
    from ..ingest.synth import generate_cohort

    r = generate_cohort(out, patients=patients, seed=seed, image_size=image_size)
    Console().print(
        f"[bold]generated[/bold] {r.patients} patients, {r.lesions} lesions, {r.images} images "
        f"({r.malignant} malignant lesions) -> {r.out}\nnext: slimp ingest synth {r.out} SHARDS"
    )


@schema_app.command("infer")
def infer_command(
    csv: Path = typer.Argument(
        ..., metavar="TABLE", help="The metadata table (CSV, or TSV with .tsv/.tab)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the draft here instead of stdout."),
) -> None:
    """Draft a dataset schema for a new table: types and roles guessed, marked '_todo' to confirm."""
    from ..core.paths import write_text
    from ..ingest.infer import infer_schema

    text = json.dumps(
        infer_schema(csv), indent=2, ensure_ascii=False
    )  # key order kept: roles first
    if out is None:
        typer.echo(text)
    else:
        write_text(out, text + "\n")
        Console(stderr=True).print(
            f"draft schema -> {out} (review the '_todo' notes, then delete '_todo')"
        )


def register(app: typer.Typer) -> None:
    """Add `ingest`, `synth` and `schema infer` to the slimp app."""
    app.command("ingest")(ingest_command)
    app.command("synth")(synth_command)
    app.command("verify")(verify_command)
    app.add_typer(schema_app, name="schema")
