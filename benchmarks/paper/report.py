"""The report: rows of every section from the probe JSONs, the training budget of every model,
provenance; its markdown and the printed tables.

Every classification row carries the probe JSON files it was averaged from (`files`, one per
pre-training seed), its per-seed values and the held-out fingerprint of those probes, so a
reader (and tests/test_paper_tables.py) can check the table against its sources.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slimp_cli.core.paths import write_json

from .spec import METADATA, MODELS, MULTILABEL, PAPER, RETRIEVAL, SECTIONS

REPO = Path(__file__).resolve().parent.parent.parent
DATASET_NAMES = {"pad": "PAD-UFES-20", "derm7pt": "Derm7pt", "slice3d": "SLICE-3D"}
METRICS = ("accuracy", "balanced_accuracy", "f1", "auc", "ap", "pauc_80")
PAPER_METRICS = METRICS[:4]  # the paper prints these four; AP and pAUC (ISIC 2024) are slimp's
RETRIEVAL_METRICS = ("R@1", "R@5", "R@10", "mAP")
DATASET_ORDER = ("pad", "derm7pt")


def over_seeds(values: list[float | None]) -> dict:
    vals = np.array([v for v in values if v is not None], dtype=float)
    if not len(vals):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(vals.mean()), "std": float(vals.std()), "n": int(len(vals))}


def probe_value(report: dict, method: str, metric: str) -> float | None:
    """One metric of one method (the full-label result) of a probe JSON."""
    row = next(r for r in report["results"] if r["method"] == method and r["low_shot"] is None)
    return (row["metrics"].get(metric) or {}).get("mean")


def _features_label(feats: Sequence[str], pseudo: str | None) -> str:
    if pseudo is None:
        return "+".join(feats)
    return f"image+pseudo lesion/patient ({pseudo})"


def build_report(res: dict, *, sources: dict, seeds: Sequence[int], experiments) -> dict:
    from .pipeline import row_features

    datasets = [ds for ds in DATASET_ORDER if ds in sources]
    rows = []
    for ds in datasets:
        held = next(iter(res["holdout"][ds].values()))
        has_patient = res["has_patient"][ds]
        for section in SECTIONS:
            if section.experiment not in experiments:
                continue
            for row in section.rows:
                base = {
                    "dataset": ds,
                    "section": section.key,
                    "method": row.method,
                    "test_rows": held["rows"],
                    "paper": PAPER.get(row.paper) if row.paper and ds == "pad" else None,
                }
                if row.model == METADATA:
                    rep = res["baseline"].get(ds)
                    if rep is None:
                        continue
                    r = next(x for x in rep["results"] if x["method"] == row.method)
                    rows.append(
                        {
                            **base,
                            "model": row.label,
                            "model_key": METADATA,
                            "variant": METADATA,
                            "features": "raw metadata",
                            "pseudo": None,
                            "split": r["split"],
                            "holdout_fingerprint": rep["split"]["holdout_fingerprint"],
                            "seeds_over": "classifier seeds (fixed split)",
                            "metrics": {
                                m: dict(r["metrics"].get(m) or {}, n=len(r["seeds"]))
                                for m in METRICS
                            },
                            "per_seed": None,
                            "files": [rep["file"]],
                        }
                    )
                    continue
                model = MODELS[row.model]
                if (ds, model.key) not in res["features"]:
                    continue
                feats = row_features(model, row, has_patient)
                fname = "+".join(feats)
                reps = [res["probe"].get((ds, model.key, s, fname, row.pseudo)) for s in seeds]
                if not all(reps):
                    continue
                per_seed = {m: [probe_value(r, row.method, m) for r in reps] for m in METRICS}
                rows.append(
                    {
                        **base,
                        "model": row.label or model.name,
                        "model_key": model.key,
                        "variant": model.variant,
                        "features": _features_label(feats, row.pseudo),
                        "pseudo": row.pseudo,
                        "split": reps[0]["split"]["kind"],
                        "holdout_fingerprint": reps[0]["split"]["holdout_fingerprint"],
                        "seeds_over": "pre-training seeds",
                        "metrics": {m: over_seeds(per_seed[m]) for m in METRICS},
                        "per_seed": per_seed,
                        "files": [r["file"] for r in reps],
                    }
                )
    retrieval = []
    for ds in datasets:
        for key, paper_key in RETRIEVAL:
            reps = [res["retrieval"].get((ds, key, s)) for s in seeds]
            if not all(reps):
                continue
            for task in ("image_to_lesion", "lesion_to_image"):
                paper = PAPER.get(f"{paper_key} {task}") if paper_key and ds == "pad" else None
                retrieval.append(
                    {
                        "dataset": ds,
                        "model": MODELS[key].name,
                        "model_key": key,
                        "task": task,
                        "queries": reps[0]["n_queries"],
                        "metrics": {
                            m: over_seeds([r[task].get(m) for r in reps]) for m in RETRIEVAL_METRICS
                        },
                        "paper": paper,
                    }
                )
    multilabel = []
    for ds in datasets:
        for key in MULTILABEL:
            reps = [res["multilabel"].get((ds, key, s)) for s in seeds]
            if not all(reps):
                continue
            targets = [r["target"] for r in reps[0]["results"] if r["method"] == "linear"]
            for target in targets:
                for method in ("linear", "knn"):
                    vals = [
                        next(
                            r["metrics"]
                            for r in rep["results"]
                            if r["method"] == method and r["target"] == target
                        )
                        for rep in reps
                    ]
                    multilabel.append(
                        {
                            "dataset": ds,
                            "model": MODELS[key].name,
                            "model_key": key,
                            "criterion": target,
                            "method": method,
                            "features": "image",
                            "metrics": {
                                m: over_seeds([(v.get(m) or {}).get("mean") for v in vals])
                                for m in ("accuracy", "balanced_accuracy", "f1_macro", "auc")
                            },
                        }
                    )
    warnings = sorted(
        {
            f"{key[0]}: {w}"
            for kind in ("probe", "retrieval", "multilabel")
            for key, rep in res[kind].items()
            for w in rep.get("warnings", [])
        }
        | {f"{ds}: {w}" for ds, rep in res["baseline"].items() for w in rep["warnings"]}
    )
    return {
        "format": "slimp-paper-tables",
        "version": 2,
        "experiments": list(experiments),
        "sections": {s.key: s.title for s in SECTIONS if s.experiment in experiments},
        "classification": rows,
        "retrieval": retrieval,
        "multilabel": multilabel,
        "training": training_records(res, datasets, seeds),
        "holdout": {
            ds: {
                k: v for k, v in next(iter(res["holdout"][ds].values())).items() if k != "features"
            }
            for ds in datasets
        },
        "warnings": warnings,
        "sm3": res["sm3"]["table"] if res["sm3"] else None,
        "images_add": images_add_records(res, datasets),
    }


def images_add_records(res: dict, datasets: Sequence[str]) -> list[dict]:
    """One record per dataset, model and comparison ("model": its features alone;
    "metadata+model": the raw metadata and its features) against the metadata-only logistic
    regression, on the same held-out rows (eval/images_add.py)."""
    out = []
    for ds in datasets:
        for (d, key), rep in res.get("images_add", {}).items():
            if d != ds:
                continue
            for row in rep["rows"]:
                out.append(
                    {
                        "dataset": ds,
                        "model": MODELS[key].name,
                        "comparison": row["name"],
                        "features": rep["features"],
                        "a": row["a"],
                        "b": row["b"],
                        "n": row["n"],
                        "n_positive": row["n_positive"],
                        "n_patients": row["n_patients"],
                        "metrics": row["metrics"],
                        "metrics_ci": row.get("metrics_ci"),
                        **{k: row[k] for k in row if k.startswith("delta_")},
                        "ci": row.get("ci"),
                        "p_delong": row.get("p_delong"),
                    }
                )
    return out


def training_records(res: dict, datasets: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """Per dataset and model: each training stage's recipe and budget (steps of the schedule
    and done, images seen, lr), from the runs' samplers (`train.budget.run_budget`)."""
    out = []
    for ds in datasets:
        for key in MODELS:
            per_seed = res["models"].get((ds, key))
            if not per_seed:
                continue
            stages = []
            for j, (label, _) in enumerate(per_seed[0]):
                tags = [seed_stages[j][1] for seed_stages in per_seed]
                budgets = [res["budget"][t] for t in tags]
                b = budgets[0]
                stages.append(
                    {
                        "stage": label,
                        "runs": tags,
                        "kind": b["kind"],
                        "variant": b["variant"],
                        "tune": b["tune"],
                        "images_per_step": b["images_per_step"],
                        "patients_per_batch": b["patients_per_batch"],
                        "lesions_per_patient": b["lesions_per_patient"],
                        "images_per_batch": b["images_per_batch"],
                        "epochs": b["epochs"],
                        "steps": b["steps"],
                        "steps_done": [x["steps_done"] for x in budgets],
                        "images_seen": [x["images_seen"] for x in budgets],
                        "lr": b["lr"],
                    }
                )
            out.append(
                {"dataset": ds, "model": MODELS[key].name, "model_key": key, "stages": stages}
            )
    return out


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------
def _pct(metric: str) -> bool:
    return metric in ("accuracy", "balanced_accuracy")


def fmt_metric(metric: str, value: dict | None) -> str:
    """Acc/BA as percent (one decimal), F1/AUC as fractions (three), mean ± std."""
    if not value or value.get("mean") is None:
        return "—"
    scale, digits = (100.0, 1) if _pct(metric) else (1.0, 3)
    text = f"{value['mean'] * scale:.{digits}f}"
    if value.get("std") is not None and value.get("n", 0) > 1:
        text += f" ± {value['std'] * scale:.{digits}f}"
    return text


def fmt_paper(metric: str, paper: dict | None) -> str:
    if not paper or paper.get(metric) is None:
        return "—"
    v = paper[metric]
    return f"{v:.1f}" if _pct(metric) or metric.startswith(("R@", "mAP")) else f"{v:.3f}"


def fmt_retrieval(value: dict) -> str:
    if value.get("mean") is None:
        return "—"
    text = f"{value['mean'] * 100:.1f}"
    if value.get("n", 0) > 1:
        text += f" ± {value['std'] * 100:.1f}"
    return text


def fmt_count(values: Sequence[int] | int) -> str:
    """An integer, or the range over seeds when they differ."""
    vals = [values] if isinstance(values, int) else list(values)
    lo, hi = min(vals), max(vals)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def classification_table(
    rows: list[dict], section: str | None = None
) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "table", "model", "features", "method"]
    for m in ("Acc", "BA", "F1", "AUC"):
        head += [m, f"{m} paper"]
    head += ["AP", "pAUC80", "paper source"]
    body = []
    for r in rows:
        if section is not None and r["section"] != section:
            continue
        cells = [DATASET_NAMES[r["dataset"]], r["section"], r["model"], r["features"], r["method"]]
        for m in PAPER_METRICS:
            cells += [fmt_metric(m, r["metrics"].get(m)), fmt_paper(m, r["paper"])]
        cells += [fmt_metric(m, r["metrics"].get(m)) for m in ("ap", "pauc_80")]
        cells.append((r["paper"] or {}).get("source", "—"))
        body.append(cells)
    return head, body


def _with_ci(value: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    text = f"{value:+.{digits}f}" if ci is not None and value is not None else f"{value:.{digits}f}"
    if ci is not None and None not in ci:
        text += f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
    return text


def images_add_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = [
        "dataset",
        "model",
        "features vs metadata-only",
        "n (malignant, patients)",
        "AUC",
        "AUC metadata",
        "ΔAUC [95% CI]",
        "ΔpAUC80 [95% CI]",
        "ΔBA [95% CI]",
        "DeLong p",
    ]
    body = []
    for r in records:
        ci = r.get("ci") or {}
        a, b = r["metrics"]["a"], r["metrics"]["b"]
        p = r.get("p_delong")
        body.append(
            [
                DATASET_NAMES[r["dataset"]],
                r["model"],
                r["a"],
                f"{r['n']} ({r['n_positive']}, {r['n_patients']})",
                "—" if a.get("auc") is None else f"{a['auc']:.3f}",
                "—" if b.get("auc") is None else f"{b['auc']:.3f}",
                _with_ci(r.get("delta_auc"), ci.get("delta_auc")),
                _with_ci(r.get("delta_pauc_80"), ci.get("delta_pauc_80")),
                _with_ci(r.get("delta_balanced_accuracy"), ci.get("delta_balanced_accuracy")),
                "—" if p is None else f"{p:.3g}",
            ]
        )
    return head, body


def training_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "model", "stage", "trains", "per step", "epochs", "steps", "images seen"]
    head.append("lr")
    body = []
    for rec in records:
        for st in rec["stages"]:
            body.append(
                [
                    DATASET_NAMES[rec["dataset"]],
                    rec["model"],
                    st["stage"],
                    "embeddings" if st["tune"] == "embeddings" else "all",
                    st["images_per_step"],
                    str(st["epochs"]),
                    fmt_count(st["steps_done"]),
                    fmt_count(st["images_seen"]),
                    f"{st['lr']:.3g}",
                ]
            )
    return head, body


def retrieval_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "model", "task", "queries"]
    for m in RETRIEVAL_METRICS:
        head += [m, f"{m} paper"]
    head.append("paper source")
    body = []
    for r in rows:
        cells = [DATASET_NAMES[r["dataset"]], r["model"], r["task"], str(r["queries"])]
        for m in RETRIEVAL_METRICS:
            cells += [fmt_retrieval(r["metrics"][m]), fmt_paper(m, r["paper"])]
        cells.append((r["paper"] or {}).get("source", "—"))
        body.append(cells)
    return head, body


def multilabel_table(
    rows: list[dict], *, criteria: bool = False
) -> tuple[list[str], list[list[str]]]:
    """The mean over the seven criteria (`criteria=True`: every criterion too)."""
    head = ["dataset", "model", "criterion", "method", "Acc", "BA", "F1-macro", "AUC"]
    body = []
    for r in rows:
        if not criteria and r["criterion"] != "mean":
            continue
        m = r["metrics"]
        body.append(
            [
                DATASET_NAMES[r["dataset"]],
                r["model"],
                r["criterion"],
                r["method"],
                fmt_metric("accuracy", m["accuracy"]),
                fmt_metric("balanced_accuracy", m["balanced_accuracy"]),
                fmt_metric("f1", m["f1_macro"]),
                fmt_metric("auc", m["auc"]),
            ]
        )
    return head, body


def sm3_table(sm3: dict) -> tuple[list[str], list[list[str]]]:
    table = sm3["linear"]
    head = [
        "SM3 stage 1 (linear)",
        *[f"{c} ({k})" if k else c for c, k in zip(table["columns"], table["classes"])],
    ]
    body = [  # Table I's row order (JSON files sort keys)
        [row, *["n/a" if v is None else f"{v:.3f}" for v in table[row]]]
        for row in ("AUC", "Sens.", "Spec.", "Prec.")
        if row in table
    ]
    return head, body


def md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    run = report["run"]
    held = "; ".join(
        f"{DATASET_NAMES[ds]}: {h['rows']} images of {h['patients']} held-out patients "
        f"({h['malignant']} malignant), holdout {h['fingerprint']}"
        for ds, h in report["holdout"].items()
    )
    slice3d = run["settings"].get("slice3d")
    parts = [
        f"Preset `{run['preset']}`, pre-training seeds {run['seeds']}"
        + (f", SLICE-3D: {slice3d}" if slice3d else ", no SLICE-3D (from-scratch rows only)")
        + f"; {held}.",
        "Every number is on patients held out of every training stage (`--split holdout`; "
        "stores of models that never trained on the target are scored on the same patients); "
        "mean ± std over pre-training seeds (metadata-only rows: over the classifier's seeds). "
        "Acc and BA in %, F1 and AUC as fractions, as the paper prints them. The paper's "
        "figures (PAD-UFES-20, ViT-S, full datasets, a random 90/10 split) stand beside the "
        "row of the same pipeline: a reference, not the same data.",
    ]
    for key, title in report["sections"].items():
        head, body = classification_table(report["classification"], key)
        if body:
            parts += ["", f"{key}: {title}", "", md_table(head, body)]
    parts += [
        "",
        "Training of every model (steps done; images seen: the samplers' draws over all epochs, "
        "a SimCLR draw is encoded as two views; a range spans the seeds):",
        "",
        md_table(*training_table(report["training"])),
        "",
        "Image <-> metadata retrieval on the held-out images (%, ties count half):",
        "",
        md_table(*retrieval_table(report["retrieval"])),
    ]
    if report.get("images_add"):
        parts += [
            "",
            "What the images add: each model's features, alone and beside the raw metadata, "
            "against the metadata-only logistic regression on the same held-out rows (first "
            "seed; Δ = model − metadata; patient-bootstrap 95% intervals; DeLong treats rows as "
            "independent, the interval is the figure to trust with several lesions per patient):",
            "",
            md_table(*images_add_table(report["images_add"])),
        ]
    if report["multilabel"]:
        parts += [
            "",
            "Derm7pt seven-point criteria from image features: one multiclass probe per "
            "criterion, the mean over the seven criteria of each metric (per criterion in "
            "`paper_tables.json`):",
            "",
            md_table(*multilabel_table(report["multilabel"])),
        ]
    if report.get("sm3"):
        parts += [
            "",
            "SM3 (the second method, `pretrain --method sm3`, stage 1) on Derm7pt, the SM3 "
            "paper's Table I layout (AUC, sensitivity, specificity, precision of the reported "
            "class of each criterion), linear probe, one pre-training seed. The shared subset "
            "has no clinical images: only the dermoscopic branch learns.",
            "",
            md_table(*sm3_table(report["sm3"])),
        ]
    parts += [
        "",
        f"Machine: {run['machine']['summary']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        + f". Commit {run['git']['commit']}{' (uncommitted changes)' if run['git']['dirty'] else ''}. "
        f"Compute time of all stages {run['compute_seconds_all_stages']:.0f} s; this invocation "
        f"{run['wall_seconds_this_invocation']:.0f} s ({run['stages_this_invocation']['computed']} "
        f"stages computed, {run['stages_this_invocation']['skipped']} skipped).",
    ]
    return "\n".join(parts) + "\n"


def print_tables(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=240)

    def show(title: str, head: list[str], body: list[list[str]], caption: str | None = None):
        t = Table(title=title, caption=caption)
        for h in head:
            t.add_column(h, justify="right" if h[0].isupper() or h.endswith("paper") else "left")
        for row in body:
            t.add_row(*row)
        console.print(t)

    held = ", ".join(
        f"{DATASET_NAMES[ds]} {h['rows']} held-out images" for ds, h in report["holdout"].items()
    )
    for key, title in report["sections"].items():
        head, body = classification_table(report["classification"], key)
        if body:
            show(
                f"{key}: {title}",
                head,
                body,
                caption=f"{held}; mean ± std over pre-training seeds {report['run']['seeds']}; "
                "Acc/BA %, F1/AUC fractions",
            )
    show("training: steps, images seen, lr", *training_table(report["training"]))
    if report.get("images_add"):
        show(
            "what the images add (Δ vs metadata-only logistic regression, 95% CI)",
            *images_add_table(report["images_add"]),
        )
    show("image <-> metadata retrieval (%)", *retrieval_table(report["retrieval"]))
    if report["multilabel"]:
        show(
            "Derm7pt seven-point criteria (image features)", *multilabel_table(report["multilabel"])
        )


# ------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------
def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["memory_gb"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (ValueError, OSError, AttributeError):
        info["memory_gb"] = None
    info["summary"] = (
        f"{info['cpu_count']} CPU cores ({info['processor']}), "
        f"{info['memory_gb']} GB RAM, GPU: {info['gpu'] or 'none'}, {platform.system()}"
    )
    return info


def versions() -> dict:
    import sklearn
    import timm
    import torch

    import slimp_cli

    return {
        "slimp": getattr(slimp_cli, "__version__", "?"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD") or None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def finish_report(
    report: dict, out: Path, *, preset_name, preset, seeds, stages, settings, t_start
) -> dict:
    """Add the run record; write paper_tables.json and paper_tables.md (atomically)."""
    from slimp_cli.core.paths import atomic_path

    report["run"] = {
        "preset": preset_name,
        "preset_settings": preset,
        "settings": settings,
        "seeds": list(seeds),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
        "wall_seconds_this_invocation": round(time.perf_counter() - t_start, 1),
        "compute_seconds_all_stages": round(stages.total_seconds(), 1),
        "stages_this_invocation": dict(stages.counts),
        "invocation": stages.invocation,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }
    write_json(out / "paper_tables.json", report)
    with atomic_path(out / "paper_tables.md") as tmp:
        tmp.write_text(to_markdown(report))
    return report


# ------------------------------------------------------------------------------------------
# the HTML page (`paper_tables.py --report FILE.html`)
# ------------------------------------------------------------------------------------------
def report_tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """[(title, head, body)] of the report: the tables of paper_tables.md, in its order."""
    out = []
    for key, title in (report.get("sections") or {}).items():
        head, body = classification_table(report.get("classification") or [], key)
        if body:
            out.append((f"{key}: {title}", head, body))
    if report.get("training"):
        out.append(("Training: steps, images seen, lr", *training_table(report["training"])))
    if report.get("retrieval"):
        out.append(
            (
                "Image <-> metadata retrieval on the held-out images (%, ties count half)",
                *retrieval_table(report["retrieval"]),
            )
        )
    if report.get("images_add"):
        out.append(
            (
                "What the images add (Δ vs the metadata-only logistic regression, 95% CI)",
                *images_add_table(report["images_add"]),
            )
        )
    if report.get("multilabel"):
        out.append(
            (
                "Derm7pt seven-point criteria from image features (mean over the criteria)",
                *multilabel_table(report["multilabel"]),
            )
        )
    if report.get("sm3"):
        out.append(("SM3 stage 1 on Derm7pt (SM3 paper Table I layout)", *sm3_table(report["sm3"])))
    return out


def to_html(report: dict) -> str:
    """One self-contained HTML page of the report's tables (slimp_cli.app.html): the same
    tables as paper_tables.md, the held-out patients, the run record and the warnings; no
    external request (SlimpError if the page would make one)."""
    from slimp_cli.app.html import external_references, render_tables_page
    from slimp_cli.core.errors import SlimpError

    run = report.get("run") or {}
    title = "slimp: the papers' tables" + (
        f" (preset {run['preset']})" if run.get("preset") else ""
    )
    text = render_tables_page(report, title=title, tables=report_tables(report))
    refs = external_references(text)
    if refs:
        raise SlimpError(f"the page would fetch {refs[0]}: not written")
    return text


def write_html(report: dict, path: Path) -> Path:
    """`to_html(report)` written to `path` atomically."""
    from slimp_cli.core.paths import write_text

    write_text(path, to_html(report))
    return path
