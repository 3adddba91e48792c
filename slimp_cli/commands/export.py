"""`slimp export` and `slimp encode`: a model out of the tool, one lesion through it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from .ingest import MAX_IMAGE_PIXELS_HELP, apply_max_image_pixels
from .options import device_option, files_option, flag, run_argument

console = Console(stderr=True, highlight=False)


def export_cmd(
    run: Path = run_argument(),
    out: Path = typer.Argument(..., metavar="OUT", help="Folder to write (new or empty)."),
    metrics: list[Path] | None = files_option(
        "--metrics",
        "A `slimp probe --json` report of this model's features, quoted with its split in the "
        "model card (repeatable).",
    ),
    overwrite: bool = flag("--overwrite", "Replace a non-empty folder."),
) -> None:
    """Write the image encoder as timm files (model.safetensors + config.json), the metadata
    encoders and projections (slimp_heads.safetensors) and a model card (README.md).

    Load it with plain timm: timm.create_model("local-dir:OUT", pretrained=True).
    """
    from ..features.export import export_run

    result = export_run(run, out, metrics_files=list(metrics or []), overwrite=overwrite)
    console.print(
        f"wrote {result.out}: {', '.join(result.files)} (timm architecture "
        f"{result.architecture}; load with timm.create_model('local-dir:{result.out}', "
        "pretrained=True))",
        markup=False,
    )


def encode_cmd(
    run: Path = run_argument(),
    image: Path = typer.Option(..., "--image", help="The lesion's image (JPEG, PNG, ...)."),
    meta: Path | None = typer.Option(
        None,
        "--meta",
        help="JSON object of the lesion's and its patient's fields (as in the dataset's table; "
        "n_lesions for patient-level models). Without it: the image vector alone.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write the vectors as JSON here instead of printing them."
    ),
    device: str = device_option("cpu"),
    max_image_pixels: int | None = typer.Option(
        None, "--max-image-pixels", min=0, help=MAX_IMAGE_PIXELS_HELP
    ),
) -> None:
    """Embed one lesion (image, and metadata with --meta) without ingesting it: the same
    vectors as its row in a `slimp embed` store."""
    from ..core.paths import prepare_output_file, write_json
    from ..features.encode import encode_lesion, read_meta

    apply_max_image_pixels(max_image_pixels)
    if out is not None:
        prepare_output_file(out, "--out")
    row = read_meta(meta) if meta is not None else None
    result = encode_lesion(run, image, row, device=device)
    for key in ("missing", "ignored", "unknown"):
        if result.get(key):
            console.print(f"note: {key} field(s): {', '.join(result[key])}", markup=False)
    if out is None:
        typer.echo(json.dumps(result))
    else:
        write_json(out, result)
        dims = ", ".join(f"{k} {len(result[k])}" for k in result["levels"])
        console.print(f"wrote {out}: {dims}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("encode")(encode_cmd)
