"""`slimp embed` and `slimp demo`: options in, library call, a short summary out."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .choices import DEVICE_HELP, WORKERS_HELP, device_name

console = Console(stderr=True)


def embed_cmd(
    checkpoint: Path = typer.Argument(
        ..., help="Run dir of slimp pretrain/adapt, or a checkpoint file in it."
    ),
    data: Path = typer.Argument(..., help="Shard folder written by slimp ingest."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Feature store to write (HDF5, e.g. feats/pad.h5; missing folders are created).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Lesions per forward pass."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP, callback=device_name),
    image_only: bool = typer.Option(
        False,
        "--image-only",
        help="Embed images only: for data whose metadata columns the model was not built for "
        "(the target of slimp extrapolate).",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help=WORKERS_HELP),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing store at --out (and its pseudo/ features)."
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Check every shard's sha256 against manifest.json first."
    ),
) -> None:
    """Cache frozen-encoder embeddings (image, lesion, patient) of every lesion in an HDF5 store.

    The store also holds ids, labels, the encoded raw metadata (raw/, for baselines) and the
    model's phenotype layer (for extrapolate). It is written under a temporary name and renamed
    when complete.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ..paths import prepare_output_file
    from ..store import check_store_destination

    prepare_output_file(out, "--out")  # a missing folder is created
    check_store_destination(out, overwrite=overwrite)  # in a second, before torch is imported
    from ..embed import embed, store_summary

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar debris in logs and pipes
    ) as bar:
        task = bar.add_task("embedding lesions", total=None)
        path = embed(
            checkpoint,
            data,
            out,
            batch_size=batch_size,
            device=device,
            image_only=image_only,
            workers=workers,
            overwrite=overwrite,
            verify=verify,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    info = store_summary(path)
    dims = ", ".join(f"{k} {v}" for k, v in info["features"].items())
    console.print(f"wrote [bold]{path}[/]: {info['lesions']} lesions; features: {dims}")


def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "--out", help="Folder for every file the demo writes."
    ),
    patients: int = typer.Option(250, "--patients", help="Patients in the generated cohort."),
    steps: int = typer.Option(100, "--steps", help="Pre-training steps of each model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort and of training."),
) -> None:
    """Run the whole pipeline on a generated cohort on the CPU and print one results table.

    synth -> ingest -> pretrain (tiny nested SLIMP and image-only SimCLR) -> embed -> probe both
    -> extrapolate onto an image-only copy -> probe with pseudo-metadata.
    """
    from ..demo import run_demo

    run_demo(out, patients=patients, steps=steps, seed=seed, console=console)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.command("demo")(demo_cmd)
