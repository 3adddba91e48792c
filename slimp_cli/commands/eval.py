"""`slimp probe`, `slimp retrieve`, `slimp extrapolate`: parse options, call the library, print.

User errors (SlimpError) propagate to `cli.main`, which prints one line and exits 1.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core.errors import SlimpError
from .choices import (
    DEVICE_HELP,
    LEVELS,
    PROBE_METHODS,
    Classifier,
    Label,
    ProbeRecipe,
    RetrieveSplit,
    Split,
    Strategy,
    Task,
    comma_list,
    value,
)
from .options import device_option, flag, json_option

err_console = Console(stderr=True, highlight=False)


def _out() -> Console:
    # a pipe or file gets whole rows instead of rich's 80-column default for non-terminals
    return Console() if sys.stdout.isatty() else Console(width=200)


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _numbers(text: str | None, option: str, kind: type) -> list:
    out = []
    for t in _csv(text):
        try:
            out.append(kind(t))
        except ValueError:
            raise SlimpError(f"{option}: {t!r} is not a valid {kind.__name__}") from None
    return out


def _warn(messages: list[str]) -> None:
    for m in messages:
        err_console.print(f"warning: {m}", markup=False, soft_wrap=True)


def _outputs(json_path: Path | None, plots: Path | None, table: Path | None = None) -> None:
    """Create (or check) the output folders before any computing, and hold their one-writer
    locks until the command exits (a second probe writing the same files exits 1)."""
    from ..core.paths import hold_output, prepare_output_dir, prepare_output_file

    for path, option in ((json_path, "--json"), (table, "--table")):
        if path is not None:
            prepare_output_file(path, option)
            hold_output(path)
    if plots is not None:
        prepare_output_dir(plots, "--plots")
        hold_output(plots, contents=True)


TABLE_HELP = (
    "Also write the table to FILE: .csv or .md by the extension, with the sizes measured on "
    "({}) beside the numbers."
)


def _table_path(path: Path | None) -> Path | None:
    """A Typer callback: --table must end in .csv or .md (exit 2 otherwise)."""
    if path is not None:
        from ..eval.tables import table_format

        try:
            table_format(path)
        except SlimpError as exc:
            raise typer.BadParameter(str(exc)) from None
    return path


def _table_option(sizes: str):
    """`--table FILE` of probe and retrieve; `sizes`: what the table says it was measured on."""
    return typer.Option(
        None, "--table", metavar="FILE", help=TABLE_HELP.format(sizes), callback=_table_path
    )


def _write_table(path: Path | None, table) -> None:
    if path is None:
        return
    from ..eval.tables import write_table

    write_table(path, table)
    err_console.print(f"wrote {path}", markup=False)


def _write_json(path: Path | None, report: dict) -> None:
    if path is None:
        return
    from ..core.paths import write_json

    try:
        write_json(path, report)
    except OSError as e:
        raise SlimpError(f"--json {path}: cannot write ({e.strerror})") from None
    err_console.print(f"wrote {path}", markup=False)


SPLIT_FILE_HELP = (
    "CSV with columns id, split (train, valid or test): a fixed split of any dataset (id = the "
    "store's lesion_id, else patient_id; every row needs one). Implies --split official."
)


def _split_option(help: str):
    """`--split` of probe and retrieve (their choices differ: the parameter's type)."""
    return typer.Option(None, "--split", help=help)


def _split_file_option():
    return typer.Option(None, "--split-file", help=SPLIT_FILE_HELP)


def _check_split_file(split: str | None, split_file: Path | None) -> None:
    """A --split-file is the official split: with another --split it is a usage error."""
    if split_file is not None and split not in (None, "official"):
        raise typer.BadParameter(
            f"a split file is a fixed train/valid/test split: use it with --split official "
            f"(or without --split), not --split {split}",
            param_hint="--split-file",
        )


def _fmt(metric: dict) -> str:
    if metric.get("mean") is None:
        return "n/a"
    if metric.get("std") is None:  # averages over criteria carry no std
        return f"{metric['mean']:.3f}"
    return f"{metric['mean']:.3f}±{metric['std']:.3f}"


def _probe_number(positive: bool):
    """A Typer callback: a finite number, > 0 (`positive`) or >= 0 (exit 2 otherwise; click's
    ranges let nan and inf through)."""

    def check(number: float | None) -> float | None:
        if number is not None and not (
            math.isfinite(number) and (number > 0 if positive else number >= 0)
        ):
            raise typer.BadParameter(f"must be a finite number {'> 0' if positive else '>= 0'}")
        return number

    return check


def probe_cmd(
    store: Path = typer.Argument(
        ..., metavar="STORE", help="Feature store (HDF5) written by slimp embed."
    ),
    label: Label = typer.Option(
        "binary",
        "--label",
        help="binary (benign/malignant, the paper's main task), multiclass (the diagnoses) or "
        "melanoma (melanoma vs every other diagnosis: SM3's DIAG MEL; the classes the dataset "
        "schema names as melanoma).",
    ),
    features: str | None = typer.Option(
        None,
        "--features",
        help="Comma list of image,lesion,patient (default: all the store has).",
        callback=comma_list(LEVELS),
    ),
    method: str = typer.Option(
        "linear,knn",
        "--method",
        help="Comma list of linear,knn.",
        callback=comma_list(PROBE_METHODS),
    ),
    split: Split | None = _split_option(
        "holdout: the run's held-out patients, unseen by every training stage (default "
        "when the store has them); random: lesion-grouped stratified 90/10 (all images of a "
        "lesion on one side; the default otherwise); patient: patient-disjoint 90/10; "
        "official: the dataset's fixed split (Derm7pt's index files, or --split-file): trained "
        "on train + valid, scored on test.",
    ),
    split_file: Path | None = _split_file_option(),
    seeds: str = typer.Option(
        "0,1,2",
        "--seeds",
        help="Comma list of seeds; metrics are mean±std over them (with --split holdout the "
        "split is fixed and the seeds vary the classifier only).",
    ),
    low_shot: str | None = typer.Option(
        None, "--low-shot", help="Comma list of fractions of training labels kept, e.g. 0.01,0.1."
    ),
    k: int = typer.Option(20, "--k", help="Neighbours of the kNN classifier."),
    knn_temperature: float = typer.Option(
        0.07, "--knn-temperature", help="kNN vote weight exp(sim / T)."
    ),
    c: float = typer.Option(
        1.0, "--C", help="Inverse L2 strength of the linear probe (standardised features)."
    ),
    cv: bool = flag("--cv", "Choose C by inner 5-fold cross-validation instead."),
    baseline: bool = flag(
        "--baseline", "Add metadata-only baselines (raw/) and a label-leakage audit."
    ),
    pseudo: Strategy | None = typer.Option(
        None,
        "--pseudo",
        help="Use pseudo lesion/patient features of slimp extrapolate (ilp, il or ii).",
    ),
    json_path: Path | None = json_option(),
    plots: Path | None = typer.Option(
        None,
        "--plots",
        help="Write ROC, confusion-matrix, reliability (P(malignant), 15 bins) and t-SNE "
        "(image / +lesion / +patient, benign vs malignant; tsne.json beside) PNGs into this "
        "folder.",
    ),
    task: Task = typer.Option(
        "classification",
        "--task",
        help="classification, or derm7pt-multilabel: probe each of the seven-point checklist "
        "criteria of Derm7pt from image (or pseudo) features.",
    ),
    device: str = device_option("auto", help="Device of the kNN search: " + DEVICE_HELP),
    classifier: Classifier = typer.Option(
        "logreg",
        "--classifier",
        help="The linear method's classifier: logreg (scikit-learn logistic regression, --C, "
        "--cv) or linear (the papers' probe: a torch linear layer, (B)CE + AdamW on "
        "standardised features, --probe-*; also used by --baseline's logistic row).",
    ),
    probe_recipe: ProbeRecipe | None = typer.Option(
        None,
        "--probe-recipe",
        help="--classifier linear: slimp (150 epochs) or sm3 (50 epochs); both lr 1e-3, weight "
        "decay 0.01, batch 128 [default: sm3 for SM3 stores, else slimp].",
    ),
    probe_epochs: int | None = typer.Option(
        None, "--probe-epochs", min=1, help="--classifier linear: epochs [default: the recipe's]."
    ),
    probe_lr: float | None = typer.Option(
        None,
        "--probe-lr",
        callback=_probe_number(positive=True),
        help="--classifier linear: AdamW learning rate [default: 1e-3].",
    ),
    probe_weight_decay: float | None = typer.Option(
        None,
        "--probe-weight-decay",
        callback=_probe_number(positive=False),
        help="--classifier linear: AdamW weight decay of the weight [default: 0.01].",
    ),
    probe_batch_size: int | None = typer.Option(
        None,
        "--probe-batch-size",
        min=1,
        help="--classifier linear: rows per step (>= the training rows: full batch) "
        "[default: 128].",
    ),
    bootstrap: int = typer.Option(
        1000,
        "--bootstrap",
        help="Patient-bootstrap resamples for the 95% interval of every metric (seeded with "
        "the first --seeds value); 0 turns the intervals off.",
    ),
    compare: tuple[str, str] | None = typer.Option(
        None,
        "--compare",
        metavar="A B",
        help="Paired comparison of two feature sets on the same held-out rows: levels joined "
        "by + (raw = the raw metadata) or baseline-logreg / baseline-gbm. Default: the probed "
        "features vs baseline-logreg, when the store has raw metadata.",
    ),
    subgroups: str | None = typer.Option(
        None,
        "--subgroups",
        help="Comma list of metadata columns for per-group AUC, sensitivity, specificity "
        "(default: Fitzpatrick skin type, sex, age band, body site where the store has them; "
        "none = off).",
    ),
    table_path: Path | None = _table_option("n test rows, n_positive malignant, n_patients"),
) -> None:
    """Linear probe and kNN classification on frozen features (mean±std over seeds)."""
    label, split, pseudo, task = value(label), value(split), value(pseudo), value(task)
    linear_probe = {
        "classifier": value(classifier),
        "probe_recipe": value(probe_recipe),
        "probe_epochs": probe_epochs,
        "probe_lr": probe_lr,
        "probe_weight_decay": probe_weight_decay,
        "probe_batch_size": probe_batch_size,
    }
    _check_linear_probe_usage(linear_probe, cv=cv, task=task)  # before the slow imports
    from ..eval.bootstrap import check_resamples

    check_resamples(bootstrap)  # before the libraries load
    from ..eval.probe import run_probe

    _check_split_file(split, split_file)
    if task == "derm7pt-multilabel" and table_path is not None:
        raise typer.BadParameter(
            "not with --task derm7pt-multilabel (its per-criterion results are in --json)",
            param_hint="--table",
        )
    _outputs(json_path, plots, table_path)
    # what run_probe and run_multilabel both take
    common = {
        "features": _csv(features) or None,
        "methods": _csv(method),
        "split": split,
        "seeds": _numbers(seeds, "--seeds", int),
        "k": k,
        "knn_temperature": knn_temperature,
        "C": c,
        "cv": cv,
        "pseudo": pseudo,
        "device": device,
        "split_file": split_file,
    }
    if task == "derm7pt-multilabel":
        return _multilabel(store, common, seeds=seeds, json_path=json_path)
    report = run_probe(
        store,
        label=label,
        low_shot_fractions=_numbers(low_shot, "--low-shot", float),
        baseline=baseline,
        plots_dir=plots,
        **common,
        **linear_probe,
        **_clinical_options(bootstrap, compare, subgroups),
    )
    _warn(report["warnings"])
    from ..eval.tables import probe_metrics, probe_table

    names = probe_metrics(label)
    table = Table(
        title=f"{escape(store.name)}: {label} classification (mean±std over seeds {seeds})",
        caption=_split_caption(report["split"]),
    )
    counts = ["n", "n_positive"]
    for col in ["method", "split", "features", "low-shot", *counts, *names.values()]:
        table.add_column(col, justify="right" if col in (*names.values(), *counts) else "left")
    for r in report["results"]:
        feats = "+".join(r["features"]) + (f" ({r['pseudo']})" if r.get("pseudo") else "")
        table.add_row(
            r["method"],
            r["split"],
            feats,
            "-" if r["low_shot"] is None else f"{r['low_shot']:g}",
            *["-" if r.get(c) is None else str(r[c]) for c in counts],
            *[_fmt(r["metrics"].get(m, {})) for m in names],
        )
    _out().print(table)
    from .clinical import print_clinical

    print_clinical(_out(), report, bootstrap=bootstrap)
    _write_json(json_path, report)
    _write_table(table_path, probe_table(report, label=label))


def _check_linear_probe_usage(options: dict, *, cv: bool, task: str) -> None:
    """Exit 2 on a combination that would silently do nothing (the library refuses it too)."""
    linear = options["classifier"] == "linear"
    if linear and cv:
        raise typer.BadParameter("--cv chooses C of --classifier logreg", param_hint="--cv")
    if linear and task != "classification":
        raise typer.BadParameter(
            f"--classifier linear is not available with --task {task}", param_hint="--classifier"
        )
    given = [k for k, v in options.items() if k != "classifier" and v is not None]
    if given and not linear:
        hint = "--" + given[0].replace("_", "-")
        raise typer.BadParameter("needs --classifier linear", param_hint=hint)


def _clinical_options(bootstrap: int, compare, subgroups: str | None) -> dict:
    """run_probe's clinical arguments from the options (`--subgroups none` turns them off)."""
    columns = None if subgroups is None else _csv(subgroups)
    if columns == ["none"]:
        columns = []
    out = {"bootstrap": bootstrap, "subgroups": columns}
    if compare is not None:
        out["compare"] = tuple(compare)
    return out


def _split_caption(split: dict) -> str:
    """One line under the table: which rows the numbers are on."""
    text = f"split: {split['kind']} ({split['grouped_by']})"
    if split.get("holdout_fingerprint") and split["kind"] == "holdout":
        text += f", holdout {split['holdout_fingerprint']}"
    if split["kind"] == "official":
        text += f", from {split.get('official_from')}"
    if split.get("test_rows_seen_in_pretraining"):
        text += (
            f"; WARNING: up to {split['test_rows_seen_in_pretraining']} test rows were seen in "
            "pre-training"
        )
    return text


def _multilabel(store, common: dict, *, seeds: str, json_path: Path | None) -> None:
    """`probe --task derm7pt-multilabel`: `common` = run_multilabel's arguments (probe's)."""
    from ..eval.multilabel import run_multilabel

    report = run_multilabel(store, **common)
    _warn(report["warnings"])
    names = {"accuracy": "Acc", "balanced_accuracy": "BA", "f1_macro": "F1-macro", "auc": "AUC"}
    table = Table(
        title=f"{escape(store.name)}: diagnosis and seven-point criteria, grouped classes "
        f"(mean±std over seeds {seeds})"
    )
    for col in ["label", "method", "features", *names.values()]:
        table.add_column(col, justify="right" if col in names.values() else "left")
    for r in report["results"]:
        feats = "+".join(r["features"]) + (f" ({r['pseudo']})" if r.get("pseudo") else "")
        table.add_row(
            r["target"], r["method"], feats, *[_fmt(r["metrics"].get(m, {})) for m in names]
        )
    _out().print(table)
    for method, t in report["table"].items():  # the SM3 paper's Table I layout
        layout = Table(
            title=f"{method}: per-label metrics of the reported class (%), SM3 Table I layout"
        )
        layout.add_column("Metrics")
        for col, cls in zip(t["columns"], t["classes"]):
            layout.add_column(f"{col}\n{cls}" if cls else col, justify="right")
        for row in ("AUC", "Sens.", "Spec.", "Prec."):
            layout.add_row(row, *["n/a" if v is None else f"{100 * v:.1f}" for v in t[row]])
        _out().print(layout)
    _write_json(json_path, report)


def retrieve_cmd(
    store: Path = typer.Argument(
        ..., metavar="STORE", help="Feature store (HDF5) with image and lesion features."
    ),
    split: RetrieveSplit | None = _split_option(
        "holdout: the run's held-out patients (default when the store has them); all: "
        "every row (the default otherwise); random (lesion-grouped) or patient: the 10% test "
        "part of a 90/10 split; official: the test cases of the dataset's fixed split "
        "(Derm7pt's index files, or --split-file). Ties count half (random tie-breaking). With "
        "--pair-matching the default is every case, and ranks are within the evaluated cases.",
    ),
    split_file: Path | None = _split_file_option(),
    seed: int = typer.Option(
        0, "--seed", help="Split seed and seed of the non-matching pair sample."
    ),
    negatives: int = typer.Option(
        100_000, "--negatives", help="Random non-matching pairs for the similarity percentiles."
    ),
    json_path: Path | None = json_option(),
    plots: Path | None = typer.Option(
        None, "--plots", help="Write the similarity histogram PNG into this folder."
    ),
    device: str = device_option("auto"),
    chunk_size: int = typer.Option(
        4096, "--chunk-size", help="Queries per similarity block (memory bound)."
    ),
    pair_matching: bool = flag(
        "--pair-matching",
        "SM3 stores: dermoscopic -> clinical pair matching (Acc@1, Acc@5, average rank; SM3 "
        "paper Table III) instead of image <-> metadata retrieval.",
    ),
    table_path: Path | None = _table_option("n_queries and n_gallery of each task"),
) -> None:
    """Image <-> metadata retrieval: R@k, NDCG@k, mAP and similarity percentiles."""
    from ..eval.retrieval import run_retrieval

    split = value(split)
    _check_split_file(split, split_file)
    if chunk_size < 1 or negatives < 1:
        raise SlimpError("--chunk-size and --negatives must be at least 1")
    _outputs(json_path, plots, table_path)
    # what run_retrieval and run_pair_matching both take
    common = {
        "split": split,
        "split_file": split_file,
        "seed": seed,
        "device": device,
        "chunk_size": chunk_size,
    }
    if pair_matching:
        return _pair_matching(store, common, json_path=json_path, table_path=table_path)
    report = run_retrieval(store, n_negative=negatives, plots_dir=plots, **common)
    _warn(report["warnings"])
    tasks = [
        t
        for t in (
            "image_to_lesion",
            "lesion_to_image",
            "image_to_patient",
            "patient_to_image",
            "phenotype_to_patient",
        )
        if t in report
    ]
    metrics = list(report["image_to_lesion"])
    table = Table(
        title=f"{escape(store.name)}: retrieval over {report['n_queries']} images of "
        f"{report['n_lesions']} lesions",
        caption=_split_caption(report["split"]),
    )
    from ..eval.tables import retrieve_table, task_queries

    table.add_column("task")
    table.add_column("n_queries", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    for t in tasks:
        table.add_row(t, str(task_queries(report, t)), *[f"{report[t][m]:.3f}" for m in metrics])
    _out().print(table)
    pct = Table(title="cosine similarity percentiles (image vs lesion metadata)")
    pct.add_column("pairs")
    qs = list(report["similarity_percentiles"]["matching"])
    for q in qs:
        pct.add_column(f"{q}%", justify="right")
    for name, vals in report["similarity_percentiles"].items():
        pct.add_row(name, *[f"{vals[q]:.3f}" for q in qs])
    _out().print(pct)
    _write_json(json_path, report)
    _write_table(table_path, retrieve_table(report))


def _pair_matching(
    store: Path, common: dict, *, json_path: Path | None, table_path: Path | None
) -> None:
    """`retrieve --pair-matching`: `common` = run_pair_matching's arguments (retrieve's)."""
    from ..eval.pair_matching import run_pair_matching

    report = run_pair_matching(store, **common)
    _warn(report["warnings"])
    pm, chance = report["pair_matching"], report["chance"]
    _out().print(
        f"{store.name}: dermoscopic -> clinical pair matching over {pm['n']} cases "
        f"({' -> '.join(report['features'])}; split {report['split']['kind']})",
        markup=False,
    )
    table = Table()
    for col in ("", "Avg Rank", "Acc@1", "Acc@5"):
        table.add_column(col, justify="right" if col else "left")
    for name, row in (("model", pm), ("chance", chance)):
        table.add_row(name, f"{row['mean_rank']:.2f}", f"{row['Acc@1']:.3f}", f"{row['Acc@5']:.3f}")
    _out().print(table)
    _write_json(json_path, report)
    from ..eval.tables import retrieve_table

    _write_table(table_path, retrieve_table(report))


def extrapolate_cmd(
    reference: Path = typer.Argument(
        ...,
        metavar="REFERENCE",
        help="Reference store (image, lesion, patient features + phenotype layer).",
    ),
    target: Path = typer.Argument(
        ...,
        metavar="TARGET",
        help="Target store with image features (slimp embed --image-only); pseudo/ is added to it.",
    ),
    strategy: Strategy = typer.Option(
        "ilp", "--strategy", help="ilp (image->lesion->patient, the paper's), il or ii."
    ),
    pool: str | None = typer.Option(
        None,
        "--pool",
        help="ilp: patient = one x_hat per target patient from its lesions' mean z_hat (the "
        "paper's; default when the target has patient ids), lesion = one per lesion.",
    ),
    device: str = device_option("auto"),
    chunk_size: int = typer.Option(
        4096, "--chunk-size", help="Target images per similarity block (memory bound)."
    ),
    examples: int = typer.Option(
        0,
        "--examples",
        help="Also draw K target images beside the reference lesions retrieved for them "
        "(their images and metadata rows, read from the stores' shards; paper Fig. 7) into "
        "--out.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Folder for the --examples panel."),
    reference_data: Path | None = typer.Option(
        None, "--reference-data", help="Shards of REFERENCE, if moved since it was embedded."
    ),
    target_data: Path | None = typer.Option(
        None, "--target-data", help="Shards of TARGET, if moved since it was embedded."
    ),
) -> None:
    """Add pseudo lesion/patient metadata features to an image-only store by retrieval."""
    from ..eval.extrapolate import extrapolate

    strategy = value(strategy)
    if chunk_size < 1:
        raise SlimpError("--chunk-size must be at least 1")
    if examples < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--examples")
    if examples and out is None:
        raise typer.BadParameter("--examples needs --out DIR", param_hint="--out")
    if examples:
        from ..eval.examples import check_sources

        check_sources(reference, target, reference_data=reference_data, target_data=target_data)
    summary = extrapolate(
        reference, target, strategy=strategy, pool=pool, device=device, chunk_size=chunk_size
    )
    _warn(summary["warnings"])
    med = summary["similarity"]["50"]
    _out().print(
        f"wrote pseudo/{strategy} ({', '.join(summary['levels'])}; pooled per {summary['pool']}) "
        f"for {summary['n']} lesions "
        f"into {target}; median retrieval similarity {med:.3f}",
        markup=False,
    )
    if examples:
        from ..eval.examples import retrieval_examples

        retrieval_examples(
            reference,
            target,
            out,
            k=examples,
            strategy=strategy,
            reference_data=reference_data,
            target_data=target_data,
            device=device,
        )
        err_console.print(
            f"wrote {out / 'retrieval-examples.png'} and retrieval-examples.json", markup=False
        )


def register(app: typer.Typer) -> None:
    """Add probe, retrieve and extrapolate to a Typer app."""
    app.command("probe")(probe_cmd)
    app.command("retrieve")(retrieve_cmd)
    app.command("extrapolate")(extrapolate_cmd)
