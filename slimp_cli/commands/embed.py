"""`slimp embed` and `slimp demo`: options in, library call, a short summary out."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .choices import DECODE_HELP, SHARD_URL_HELP, WORKERS_HELP, Decode
from .choices import shard_url as shard_url_template
from .ingest import MAX_IMAGE_PIXELS_HELP, apply_max_image_pixels
from .options import VERIFY_HELP, device_option, flag, img_size_option, resolve_input_size

console = Console(stderr=True)


def embed_cmd(
    checkpoint: Path = typer.Argument(
        ...,
        metavar="CHECKPOINT",
        help="Run dir of slimp pretrain/adapt, or a checkpoint file in it (with --image-model: "
        "the shard folder, the only argument).",
    ),
    data: Path | None = typer.Argument(
        None, metavar="DATA", help="Shard folder written by slimp ingest."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Feature store to write (HDF5, e.g. feats/pad.h5; missing folders are created).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Lesions per forward pass."),
    device: str = device_option("auto"),
    image_only: bool = flag(
        "--image-only",
        "Embed images only: for data whose metadata columns the model was not built for "
        "(the target of slimp extrapolate).",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help=WORKERS_HELP),
    overwrite: bool = flag(
        "--overwrite", "Replace an existing store at --out (and its pseudo/ features)."
    ),
    verify: bool = flag("--verify", VERIFY_HELP),
    image_model: str | None = typer.Option(
        None,
        "--image-model",
        help="Embed with this timm model instead of a slimp run (`slimp embed DATA "
        "--image-model NAME --image-weights FILE`): image features only, the model's own "
        "mean/std, nothing downloaded.",
    ),
    image_weights: Path | None = typer.Option(
        None, "--image-weights", help="Local weights of --image-model (torch or .safetensors)."
    ),
    input_size: int | None = typer.Option(
        None,
        "--input-size",
        min=1,
        help="--image-model input side in pixels (default: its pretrained config's).",
    ),
    img_size: int | None = img_size_option(),
    shard_url: str | None = typer.Option(
        None,
        "--shard-url",
        help=SHARD_URL_HELP + " The store is the same, rows in the same order; with --workers "
        "each worker streams every Nth shard.",
        callback=shard_url_template,
    ),
    max_image_pixels: int | None = typer.Option(
        None, "--max-image-pixels", min=0, help=MAX_IMAGE_PIXELS_HELP
    ),
    decode: Decode = typer.Option(Decode.cpu, "--decode", help=DECODE_HELP),
) -> None:
    """Cache frozen-encoder embeddings (image, lesion, patient) of every lesion in an HDF5 store.

    The store also holds ids, labels, the encoded raw metadata (raw/, for baselines) and the
    model's phenotype layer (for extrapolate). It is written under a temporary name and renamed
    when complete.

    `slimp embed DATA --image-model NAME --image-weights FILE [--input-size PX]` embeds with any
    timm model and local weights instead (image features only, the model's own mean/std, no
    split: probe it with --split random or patient, the same splits as a SLIMP store).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ..core.paths import prepare_output_file
    from ..features.store import check_store_destination

    prepare_output_file(out, "--out")  # a missing folder is created
    check_store_destination(out, overwrite=overwrite)  # in a second, before torch is imported
    from ..features.embed import embed, store_summary

    size = resolve_input_size(input_size, img_size, console)  # the deprecated name, as pretrain's
    apply_max_image_pixels(max_image_pixels)
    foreign = _foreign_args(checkpoint, data, image_model, image_weights, size)
    if foreign is not None and decode.value != "cpu":
        raise typer.BadParameter(
            "decodes for a slimp run's store; --image-model decodes on the CPU",
            param_hint="--decode",
        )
    if foreign is not None and shard_url is not None:
        raise typer.BadParameter(
            "embeds a slimp run's store; --image-model reads local shards", param_hint="--shard-url"
        )
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
        update = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        if foreign is not None:
            from ..features.timm_encoder import embed_foreign

            path = embed_foreign(
                checkpoint,
                out,
                **foreign,
                batch_size=batch_size,
                device=device,
                workers=workers,
                progress=update,
                overwrite=overwrite,
            )
        else:
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
                progress=update,
                shard_url=shard_url,
                decode=decode.value,
            )
    info = store_summary(path)
    dims = ", ".join(f"{k} {v}" for k, v in info["features"].items())
    console.print(f"wrote [bold]{path}[/]: {info['lesions']} lesions; features: {dims}")


def _foreign_args(checkpoint, data, image_model, image_weights, img_size) -> dict | None:
    """The `embed DATA --image-model NAME --image-weights FILE` form: its options, or None for
    the `embed CHECKPOINT DATA` form. Mixing the two is bad usage (exit 2)."""
    if image_model is None:
        if data is None:
            raise typer.BadParameter(
                "give CHECKPOINT and DATA (or DATA --image-model NAME --image-weights FILE)",
                param_hint="DATA",
            )
        for name, value in (("--image-weights", image_weights), ("--input-size", img_size)):
            if value is not None:
                raise typer.BadParameter(f"{name} needs --image-model", param_hint=name)
        return None
    if data is not None:
        raise typer.BadParameter(
            "with --image-model, DATA is the only argument (no slimp checkpoint)",
            param_hint="DATA",
        )
    if image_weights is None:
        raise typer.BadParameter(
            "--image-model needs --image-weights FILE (local weights; nothing is downloaded)",
            param_hint="--image-weights",
        )
    return {"image_model": image_model, "image_weights": image_weights, "img_size": img_size}


def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "--out", help="Folder for every file the demo writes."
    ),
    patients: int = typer.Option(250, "--patients", help="Patients in the generated cohort."),
    steps: int = typer.Option(100, "--steps", help="Pre-training steps of each model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort and of training."),
    threads: int = typer.Option(
        2,
        "--threads",
        min=1,
        help="Torch CPU threads. The numbers are identical run to run for one thread count, "
        "torch build and CPU instruction set (recorded in demo.json); another count moves the "
        "third decimal.",
    ),
) -> None:
    """Run the whole pipeline on a generated cohort on the CPU and print one results table.

    synth -> ingest -> pretrain (tiny nested SLIMP and image-only SimCLR) -> embed -> probe both
    -> extrapolate onto an image-only copy -> probe with pseudo-metadata.
    """
    from ..app.demo import run_demo

    run_demo(out, patients=patients, steps=steps, seed=seed, threads=threads, console=console)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.command("demo")(demo_cmd)
