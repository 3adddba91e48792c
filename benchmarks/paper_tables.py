"""The papers' tables from raw dataset folders, in one resumable command.

    python benchmarks/paper_tables.py --pad DIR --derm7pt DIR --preset cpu|paper --out DIR
        [--slice3d DIR | --slice3d-synth PATIENTS] [--seeds 0,1,2] [--report FILE.html]
    python benchmarks/paper_tables.py --out DIR --report FILE.html   # the page of DIR's tables

Without SLICE-3D: each target's nested, flat and image-only (SimCLR) models pre-trained on the
target from scratch (Table 3's rows, at the paper's pre-training recipe), kNN and the encoder
ablation of the same models, the metadata-only baselines on the same rows, retrieval, Derm7pt's
seven-point probe and SM3 (Table I's layout). With `--slice3d DIR` (the ISIC 2024 training
release) the paper's own pipeline too: pre-training on SLICE-3D -> continual pre-training on
each target (`adapt`, embedding layers only, B = 64) -> probes, giving Table 2's rows (SimCLR,
Pre-SLIMP, Ret-SLIMP, SLIMP_IMAGE, SLIMP_FLAT, SLIMP_B=4), Tables 6 and 18 and the retrieval of
Tables 20/21. `--slice3d-synth N` generates a SLICE-3D-shaped cohort of N patients instead
(slimp_cli.ingest.synth.generate_slice3d_cohort): the same pipeline on a CPU.

Every recipe is in benchmarks/paper/recipes.py (its docs table: `--recipe-table`); what is
reported in benchmarks/paper/spec.py. Seeds are pre-training seeds; the held-out patients are
the same for every model. Prints the tables with the paper's figures beside the rows of the same
pipeline, and the steps, images seen and lr of every model; writes `paper_tables.json` +
`paper_tables.md` (machine, versions, git commit, wall time), and with `--report FILE.html` one
self-contained HTML page of the same tables (no external request; without --pad/--derm7pt it
renders the `paper_tables.json` already in --out). Resumes: every stage writes its
output atomically and then a record under `stages/`; a second invocation skips each stage whose
record and output exist (and whose inputs were not recomputed in this invocation), and an
interrupted training continues from its last checkpoint. `stages.jsonl` logs each stage of each
invocation as computed or skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from benchmarks.paper.pipeline import (  # noqa: E402
    DATASETS,
    _pretrain,
    row_features,
    run_benchmark,
    target_holdout,
)
from benchmarks.paper.recipes import PRESETS, recipe_markdown, stage_recipe  # noqa: E402
from benchmarks.paper.report import (  # noqa: E402
    fmt_metric,
    fmt_paper,
    print_tables,
    report_tables,
    to_html,
    to_markdown,
    write_html,
)
from benchmarks.paper.spec import MODELS, PAPER, SECTIONS  # noqa: E402
from benchmarks.paper.stages import Stages  # noqa: E402

__all__ = [
    "DATASETS",
    "MODELS",
    "PAPER",
    "PRESETS",
    "SECTIONS",
    "Stages",
    "_pretrain",
    "fmt_metric",
    "fmt_paper",
    "main",
    "recipe_markdown",
    "report_tables",
    "row_features",
    "run_benchmark",
    "stage_recipe",
    "target_holdout",
    "to_html",
    "to_markdown",
    "write_html",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad", type=Path, help="PAD-UFES-20 folder (metadata.csv + images)")
    ap.add_argument("--derm7pt", type=Path, help="Derm7pt folder (meta.csv + images/)")
    slice3d = ap.add_mutually_exclusive_group()
    slice3d.add_argument(
        "--slice3d",
        type=Path,
        help="SLICE-3D (ISIC 2024 training release: train-metadata.csv + train-image.hdf5): "
        "pre-train on it, adapt to each target (Tables 2, 6, 18, 20, 21)",
    )
    slice3d.add_argument(
        "--slice3d-synth",
        type=int,
        metavar="PATIENTS",
        help="the same with a generated SLICE-3D-shaped cohort of PATIENTS patients",
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--out", type=Path, help="working folder (resumable)")
    ap.add_argument(
        "--seeds", default="0,1,2", help="pre-training seeds, comma-separated (default 0,1,2)"
    )
    ap.add_argument(
        "--recipe-table",
        action="store_true",
        help="print the preset's recipe table (docs/method.md) and exit",
    )
    ap.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="also write the tables as one self-contained HTML page; without --pad/--derm7pt, "
        "the page of the paper_tables.json already in --out",
    )
    args = ap.parse_args(argv)
    if args.recipe_table:
        print(recipe_markdown(args.preset))
        return 0
    if args.out is None:
        ap.error("--out is required")
    if args.report is not None and args.report.suffix.lower() not in (".html", ".htm"):
        ap.error(f"--report {args.report}: give an .html file name")
    if args.report is not None:  # its folder before hours of computing, not after
        from slimp_cli.core.errors import SlimpError
        from slimp_cli.core.paths import prepare_output_file

        try:
            prepare_output_file(args.report, "--report")
        except SlimpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    sources = {k: getattr(args, k) for k in DATASETS if getattr(args, k) is not None}
    if not sources and args.report is not None:
        return _render_only(args.out, args.report)
    if not sources:
        ap.error("give --pad and/or --derm7pt")
    if args.slice3d_synth is not None and args.slice3d_synth < 10:
        ap.error("--slice3d-synth: at least 10 patients")
    for name, path in [*sources.items(), ("slice3d", args.slice3d)]:
        if path is not None and not path.is_dir():
            print(f"error: --{name} {path}: no such folder", file=sys.stderr)
            return 1
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: comma-separated integers")
    if not seeds:
        ap.error("--seeds: give at least one seed")
    from slimp_cli.core.errors import SlimpError

    try:
        report = run_benchmark(
            sources,
            args.out,
            preset_name=args.preset,
            seeds=seeds,
            slice3d=args.slice3d,
            slice3d_synth=args.slice3d_synth,
        )
    except SlimpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_tables(report)
    print(
        f"wrote {args.out / 'paper_tables.json'} and {args.out / 'paper_tables.md'} "
        f"({report['run']['wall_seconds_this_invocation']:.0f} s this invocation)",
        file=sys.stderr,
    )
    if args.report is not None:
        try:
            write_html(report, args.report)
        except SlimpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.report}", file=sys.stderr)
    return 0


def _render_only(out: Path, report_path: Path) -> int:
    """`--out DIR --report FILE.html` alone: the page of DIR's paper_tables.json."""
    from slimp_cli.core.errors import SlimpError
    from slimp_cli.core.paths import read_json

    source = out / "paper_tables.json"
    try:
        if not source.is_file():
            raise SlimpError(f"{source}: no such file (run the benchmark into --out first)")
        report = read_json(source)
        if not isinstance(report, dict) or report.get("format") != "slimp-paper-tables":
            raise SlimpError(f"{source}: not a paper_tables.json (format 'slimp-paper-tables')")
        write_html(report, report_path)
    except SlimpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
