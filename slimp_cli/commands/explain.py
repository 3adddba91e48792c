"""`slimp explain`: metadata feature importance and image attention maps of trained runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False)


def explain_cmd(
    run: Path = typer.Argument(
        ..., metavar="RUN", help="Run dir of slimp pretrain/adapt (or a checkpoint)."
    ),
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Shard folder whose lesions are explained."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs and their data."),
    compare: Path | None = typer.Option(
        None, "--compare", help="A second run shown beside the first (e.g. SimCLR vs SLIMP)."
    ),
    n: int = typer.Option(8, "--n", help="Lesions whose attention maps are drawn."),
    seed: int = typer.Option(0, "--seed", help="Seed of the lesion choice."),
    max_rows: int = typer.Option(
        5000, "--max-rows", help="Lesions the feature importance is averaged over."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
) -> None:
    """What a model attends to: TRACE last-layer attention as a normalised importance per
    patient- and lesion-level feature (paper Fig. 5, App. G), and the ViT's last-block [CLS]
    attention over a few lesions, side by side for two runs (Figs. 8-9).

    Writes importance.png/.json (importance sums to 1 per encoder) and attention.png/.json/.npz
    (maps on the patch grid sum to 1; the .npz holds them upsampled to the image size).
    """
    from ..core.devices import resolve_device
    from ..eval.explain import explain

    if max_rows < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--max-rows")
    report = explain(
        run,
        data,
        out,
        compare=compare,
        n=n,
        seed=seed,
        device=str(resolve_device(device)),
        max_rows=max_rows,
    )
    for label, encoders in report["importance"].items():
        for name, enc in encoders.items():
            top = sorted(zip(enc["importance"], enc["features"]), reverse=True)[:3]
            console.print(
                f"{label} {name} encoder, top features: "
                + ", ".join(f"{f} {v:.3f}" for v, f in top),
                markup=False,
                soft_wrap=True,
            )
    for path in report["files"].values():
        if path:
            console.print(f"wrote {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
