"""`slimp report`: one self-contained HTML page for a run and its feature stores."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .options import device_option, files_option, run_argument

console = Console(stderr=True, highlight=False)


def report_cmd(
    run: Path = run_argument(),
    out: Path = typer.Option(
        ..., "--out", "-o", metavar="FILE", help="The HTML page to write (e.g. report.html)."
    ),
    store: list[Path] | None = files_option(
        "--store",
        "A feature store of this run (slimp embed): probe table with the metadata baseline "
        "beside it, ROC overlay, t-SNE of the held-out rows, retrieval figures and examples "
        "(repeatable).",
        metavar="STORE",
    ),
    probe_json: list[Path] | None = files_option(
        "--probe-json",
        "A `slimp probe --json` report shown as the probe table instead of probing each "
        "--store again (repeatable).",
    ),
    explain_dir: Path | None = typer.Option(
        None,
        "--explain",
        metavar="DIR",
        help="The output folder of `slimp explain` for this run: its attention maps and "
        "feature importance.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the probe, the t-SNE and the retrieval examples."
    ),
    device: str = device_option("cpu"),
) -> None:
    """One self-contained HTML page for a run and its stores: recipe and environment, train /
    held-out loss per epoch, probe table with the metadata baseline beside it, ROC overlay,
    t-SNE, retrieval figures and examples, attention maps. Figures are inline: the page makes
    no network request."""
    from ..app.run_report import write_run_report
    from ..core.devices import resolve_device
    from ..core.errors import check_seed

    check_seed(seed, "--seed")
    path = write_run_report(
        run,
        out,
        stores=list(store or []),
        probe_jsons=list(probe_json or []),
        explain_dir=explain_dir,
        seed=seed,
        device=str(resolve_device(device)),
    )
    console.print(f"wrote {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
