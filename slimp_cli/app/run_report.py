"""`slimp report RUN --store STORE ... --out report.html`: one self-contained page for a run.

Sections, each from what the run dir and the stores hold (nothing is trained):
- Recipe and environment: config.json's data, held-out split, model, training options,
  parameter counts and environment block (versions, device, command line, git commit).
- Training: per-epoch train loss (the mean of the epoch's metrics.jsonl rows) and held-out
  validation loss, and the logged train loss per step, with the numbers in a table.
- Per store: the probe table (SLIMP's linear probe and kNN, the metadata-only baselines beside
  them; from the `--probe-json` reports given, else computed with `run_probe` on the store's
  default split, the run's held-out patients when it has them), the ROC overlay (SLIMP's linear
  probe vs the metadata-only logistic regression on the same test rows, n in the legend), the
  t-SNE of the held-out rows, image <-> metadata retrieval (`run_retrieval`: table, R@k curve,
  similarity histogram) and retrieval examples (held-out images with the lesion metadata rows
  most similar to them, pictures from the store's shards when they are found).
- Attention maps and feature importance, when `explain`'s output folder is given.
"""

from __future__ import annotations

import os
import tempfile
import warnings as pywarnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import SlimpError
from ..core.paths import prepare_output_file, read_json, write_text
from ..features.store import FeatureStore
from ..models.runs import CONFIG, read_metrics
from . import html as H

EXAMPLES = 4  # held-out queries shown in the retrieval examples
PER_EXAMPLE = 3  # metadata rows retrieved for each
THUMB = 96  # pixels of each picture in the examples table
METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("auc", "AUC"))
METRICS += (("f1", "F1"),)
METHOD_NAMES = {
    "linear": "SLIMP features: linear probe",
    "knn": "SLIMP features: kNN",
    "baseline-logreg": "metadata only: logistic regression",
    "baseline-gbm": "metadata only: gradient boosting",
}


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run dir of a run dir or of a checkpoint file in it."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not (run_dir / CONFIG).is_file():
        raise SlimpError(f"{path}: not a slimp run dir (no {CONFIG})")
    return run_dir


# ------------------------------------------------------------------------------------------
# recipe and training curves
# ------------------------------------------------------------------------------------------
def recipe_section(config: dict) -> str:
    parts = []
    data = config.get("data") or {}
    hold = config.get("holdout") or {}
    head = {
        "kind": config.get("kind"),
        "variant": config.get("variant"),
        "data": data.get("dir"),
        "patients / lesions": f"{data.get('patients')} / {data.get('lesions')}",
        "held-out patients": (
            f"{hold.get('patients_held_out')} of "
            f"{(hold.get('patients_held_out') or 0) + (hold.get('patients_trained') or 0)} "
            f"(fraction {hold.get('fraction')}, seed {hold.get('seed')}, "
            f"fingerprint {hold.get('fingerprint')})"
            if hold
            else "none"
        ),
        "schema": (config.get("schema") or {}).get("name"),
    }
    parts.append(H.kv_table(head))
    params = (config.get("parameters") or {}).get("parts") or {}
    if params:
        rows = [(k, v.get("total"), v.get("trainable")) for k, v in params.items()]
        total = sum(r[1] or 0 for r in rows)
        rows.append(("all", total, sum(r[2] or 0 for r in rows)))
        parts.append("<h3>Parameters</h3>" + H.table(["part", "parameters", "trainable"], rows))
    cols = []
    for key, title in (("model", "Model"), ("train", "Training options")):
        if config.get(key):
            cols.append(f"<div><h3>{title}</h3>" + H.kv_table(config[key]) + "</div>")
    if config.get("environment"):
        cols.append("<div><h3>Environment</h3>" + H.kv_table(config["environment"]) + "</div>")
    parts.append('<div class="cols">' + "".join(cols) + "</div>")
    excluded = (config.get("schema") or {}).get("excluded") or []
    if excluded:
        parts.append(
            "<h3>Columns left out of the metadata</h3>"
            + H.table(["column", "reason"], [(e.get("name"), e.get("reason")) for e in excluded])
        )
    return "".join(parts)


def loss_curves(rows: Sequence[dict]) -> dict:
    """Per-epoch train and validation loss of metrics.jsonl rows.

    Train rows (means over `--log-every` steps, `epoch` counted from 0) are averaged per
    epoch; validation rows (`val_loss`, `epoch` = epochs completed) are taken as they are.
    Returns {"epochs": [1..E], "train": [E] (None where none), "val": [E] (None where none),
    "steps": [(step, loss)], "val_steps": [(step, val_loss)]}.
    """
    train: dict[int, list[float]] = {}
    val: dict[int, float] = {}
    steps, val_steps = [], []
    for r in rows:
        if "val_loss" in r and r["val_loss"] is not None:
            val[int(r.get("epoch", 0))] = float(r["val_loss"])
            val_steps.append((int(r.get("step", 0)), float(r["val_loss"])))
        elif r.get("loss") is not None and r.get("kind", "train") == "train":
            train.setdefault(int(r.get("epoch", 0)) + 1, []).append(float(r["loss"]))
            steps.append((int(r.get("step", 0)), float(r["loss"])))
    epochs = sorted(set(train) | set(val))
    return {
        "epochs": epochs,
        "train": [float(np.mean(train[e])) if e in train else None for e in epochs],
        "val": [val.get(e) for e in epochs],
        "steps": steps,
        "val_steps": val_steps,
    }


def loss_figure(curves: dict) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    for key, label, style in (
        ("train", "train (mean of the epoch's logged steps)", "o-"),
        ("val", "held-out validation", "s--"),
    ):
        pts = [(e, v) for e, v in zip(curves["epochs"], curves[key]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss per epoch", fontsize="medium")
    ax.legend(fontsize="small")
    ax = fig.add_subplot(1, 2, 2)
    if curves["steps"]:
        ax.plot(*zip(*curves["steps"]), "-", color="tab:blue", label="train (logged interval)")
    if curves["val_steps"]:
        ax.plot(*zip(*curves["val_steps"]), "s", color="tab:orange", label="held-out validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss per step", fontsize="medium")
    ax.legend(fontsize="small")
    return H.figure_png(fig)


def training_section(run_dir: Path) -> str:
    rows = read_metrics(run_dir, kind="all")
    curves = loss_curves(rows)
    if not curves["epochs"]:
        return '<p class="note">metrics.jsonl holds no loss yet.</p>'
    table = H.table(
        ["epoch", "train loss", "held-out loss"],
        [(e, t, v) for e, t, v in zip(curves["epochs"], curves["train"], curves["val"])],
    )
    note = ""
    if not any(v is not None for v in curves["val"]):
        note = (
            '<p class="note">No held-out validation loss: the run holds out no patients '
            "(--holdout 0) or streamed its shards.</p>"
        )
    caption = "Training loss of metrics.jsonl; the held-out loss is on patients never trained on."
    return H.figure(loss_figure(curves), caption) + table + note


# ------------------------------------------------------------------------------------------
# probe, ROC, t-SNE
# ------------------------------------------------------------------------------------------
def holdout_predictions(store_path, *, seed: int = 0, split: str | None = None) -> dict:
    """SLIMP's linear probe and the metadata-only logistic regression on the same test rows
    (the probe's default split: the run's held-out patients when the store has them), as
    `probe` fits them for its first seed. Returns {"split", "features", "y" [n], "proba":
    {"linear": [n], "baseline-logreg": [n]}} (probability of malignant), no baseline when the
    store has no raw metadata."""
    from ..eval import WarningLog
    from ..eval.baseline import make_baseline, raw_metadata
    from ..eval.probe import DEFAULT_C, MAX_ITER, linear_proba, load_probe_data
    from ..eval.splits import SplitInfo

    warnings = WarningLog()
    with FeatureStore.open(store_path) as store:
        blocks, y, groups, _, rows = load_probe_data(
            store, label="binary", features=None, pseudo=None, warnings=warnings
        )
        raw = raw_metadata(store)
        info = SplitInfo.of(store, rows)
    split = info.choose(split)
    train, test = info.split(split, y, groups, seed=seed, warnings=warnings)
    x = np.concatenate([blocks[n] for n in blocks], axis=1)
    proba = {}
    if len(np.unique(y[train])) == 2:
        p, _ = linear_proba(x[train], y[train], x[test], n_classes=2, C=DEFAULT_C, seed=seed)
        proba["linear"] = p[:, 1]
        if raw is not None:
            model = make_baseline("baseline-logreg", seed=seed, C=DEFAULT_C, max_iter=MAX_ITER)
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                model.fit(raw[0][rows][train], y[train])
            proba["baseline-logreg"] = model.predict_proba(raw[0][rows][test])[:, 1]
    return {"split": split, "features": list(blocks), "y": y[test], "proba": proba}


def roc_figure(pred: dict, *, title: str) -> tuple[bytes, dict]:
    """One ROC plot: SLIMP's linear probe and the metadata-only baseline on the same rows.
    Returns (PNG, {method: AUC})."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    y = pred["y"]
    n, n_pos = len(y), int((y == 1).sum())
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    aucs = {}
    names = {
        "linear": f"SLIMP linear probe ({' + '.join(pred['features'])})",
        "baseline-logreg": "metadata only (logistic regression)",
    }
    for method, p in pred["proba"].items():
        if n_pos in (0, n):
            continue  # one class only: no curve
        fpr, tpr, _ = roc_curve(y, p)
        aucs[method] = float(roc_auc_score(y, p))
        ax.plot(fpr, tpr, label=f"{names[method]}: AUC {aucs[method]:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title, fontsize="medium")
    # n in the legend: an AUC on 28 lesions and one on 2,000 must not look alike
    ax.plot([], [], " ", label=f"n = {n} test lesions, {n_pos} malignant")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_aspect("equal")
    return H.figure_png(fig), aucs


def probe_table(report: dict, *, n: int | None, n_pos: int | None, source: str) -> str:
    """The probe's results, the metadata-only baselines beside SLIMP's (full data only)."""
    rows, classes = [], []
    for r in report.get("results", []):
        if r.get("low_shot") is not None or r.get("label", "binary") != "binary":
            continue
        method = r.get("method")
        seeds = len(r.get("seeds") or [])
        metrics = r.get("metrics") or {}
        rows.append(
            [
                METHOD_NAMES.get(method, method),
                " + ".join(r.get("features") or []),
                r.get("split"),
                r.get("n", n),
                r.get("n_positive", n_pos),
                # a std over one seed says nothing: shown only over several
                *[H.fmt_mean_std(dict(metrics.get(k) or {}, n=seeds)) for k, _ in METRICS],
                seeds,
            ]
        )
        classes.append("baseline" if str(method).startswith("baseline") else None)
    if not rows:
        return f'<p class="note">{H.esc(source)}: no binary full-data probe result.</p>'
    split = report.get("split") or {}
    caption = (
        f"{source}; split {split.get('kind', rows[0][2])} ({split.get('grouped_by', '')}); "
        f"mean ± std over seeds (on the held-out split the seeds vary the classifier only). "
        "Shaded rows: the metadata alone, on the same test rows."
    )
    head = ["model", "features", "split", "n test", "n malignant"]
    head += [name for _, name in METRICS] + ["seeds"]
    return H.table(head, rows, caption=caption, row_classes=classes)


def tsne_figure(store_path, *, seed: int) -> tuple[bytes, str]:
    from ..eval import figures
    from ..eval.tsne import tsne_data

    with FeatureStore.open(store_path) as store:
        held = store.split is not None and bool((store.split == "holdout").any())
    data = tsne_data(store_path, seed=seed, side="holdout" if held else None)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "tsne.png"
        figures.tsne_panels(png, data["panels"], data["malignant"], title=data["title"])
        content = png.read_bytes()
    what = "the held-out patients' lesions" if held else "every lesion (no held-out split)"
    return content, f"t-SNE of {what}, benign vs malignant, per cumulative feature set."


# ------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------
TASKS = {
    "image_to_lesion": "image -> lesion metadata",
    "lesion_to_image": "lesion metadata -> image",
    "image_to_patient": "image -> patient metadata",
    "patient_to_image": "patient metadata -> image",
    "phenotype_to_patient": "phenotype -> patient metadata",
}


def recall_figure(report: dict) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot()
    n = report["n_queries"]
    ks = None
    for task, name in TASKS.items():
        m = report.get(task)
        if not m:
            continue
        # R@k for k >= n is 1 by construction: not drawn
        ks = sorted(int(k[2:]) for k in m if k.startswith("R@") and m[k] is not None)
        ks = [k for k in ks if k < n] or ks[:1]
        ax.plot(ks, [m[f"R@{k}"] for k in ks], "o-", label=name)
    if ks:
        ax.plot(ks, [k / n for k in ks], ":", color="gray", label=f"chance, lesion tasks (k / {n})")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("R@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Retrieval on {n} lesions", fontsize="medium")
    ax.legend(fontsize="small")
    return H.figure_png(fig)


def retrieval_section(store_path, *, seed: int, device: str) -> str:
    from ..eval.retrieval import run_retrieval

    with tempfile.TemporaryDirectory() as tmp:
        report = run_retrieval(store_path, seed=seed, device=device, plots_dir=tmp)
        histogram = (Path(tmp) / "similarity.png").read_bytes()
    ks = ("R@1", "R@5", "R@10")
    rows = []
    for task, name in TASKS.items():
        m = report.get(task)
        if m:
            rows.append([name, *[m.get(k) for k in ks], m.get("mAP"), m.get("mean_rank")])
    split = report.get("split") or {}
    caption = (
        f"{report['n_queries']} query lesions of {report['n_patients']} patients "
        f"({split.get('kind')}: {split.get('grouped_by')}); ties count half."
    )
    out = H.table(["task", *ks, "mAP", "mean rank"], rows, caption=caption)
    out += H.figure(
        recall_figure(report),
        "R@k against k; chance for the lesion tasks is k / n (the patient tasks' gallery is "
        "the patients).",
    )
    out += H.figure(
        histogram, "Cosine similarity of matching and non-matching image-metadata pairs."
    )
    for w in report.get("warnings") or []:
        out += f'<p class="note warn">{H.esc(w)}</p>'
    return out


def examples_section(store_path, *, seed: int, device: str, k: int = EXAMPLES) -> str:
    """Held-out query images and the lesion-metadata rows most similar to them."""
    from ..eval.examples import (
        format_value,
        half_malignant,
        lesion_picture,
        lesion_row,
        store_shards,
    )
    from ..eval.search import topk_cosine

    with FeatureStore.open(store_path) as store:
        if not {"image", "lesion"} <= set(store.feature_names):
            return ""
        split = store.split
        pool = np.flatnonzero(split == "holdout") if split is not None else np.arange(store.n)
        if len(pool) < 2:
            pool = np.arange(store.n)
        queries = half_malignant(pool, store.malignant[pool], k, seed=seed)
        q = np.asarray(store.dataset("image")[queries.tolist()], np.float32)
        gallery = np.asarray(store.block("lesion"), np.float32)[pool]
        sims, idx = topk_cosine(q, gallery, k=min(PER_EXAMPLE, len(pool)), device=device)
        lesion_id, patient_id = store.lesion_id, store.patient_id
        labels, classes = store.label, store.classes
        try:
            index, pairs = store_shards(store, None, "store")
        except SlimpError:
            index = pairs = None
        fields = [f["name"] for f in (store.schema or {}).get("lesion_features", [])]

    def name(row: int) -> str:
        lab = int(labels[row])
        return classes[lab] if 0 <= lab < len(classes) else "?"

    def picture(row: int) -> str:
        if index is None:
            return ""
        return H.img(
            H.array_png(lesion_picture(index, pairs[row], THUMB)), lesion_id[row], cls="thumb"
        )

    def metadata(row: int) -> str:
        if index is None:
            return ""
        meta = lesion_row(index, pairs[row])["lesion_metadata"]
        shown = [f"{f}={format_value(f, meta[f])}" for f in fields if meta.get(f) is not None]
        return ", ".join(shown)

    head = ["query (held-out image)", ""]
    for j in range(idx.shape[1]):
        head += [f"#{j + 1} metadata row", ""]
    rows = []
    for qi, r in enumerate(queries):
        cells = [
            H.Markup(picture(r)),
            H.Markup(
                f"{H.esc(lesion_id[r])}<br>{H.esc(name(r))}<br>patient {H.esc(patient_id[r])}"
            ),
        ]
        for s, j in zip(sims[qi], idx[qi]):
            g = int(pool[j])
            hit = "the query's own lesion" if lesion_id[g] == lesion_id[r] else "another lesion"
            cells += [
                H.Markup(picture(g)),
                H.Markup(
                    f"{H.esc(lesion_id[g])}: {H.esc(name(g))}, cos {s:.3f} ({hit})<br>"
                    f"<small>{H.esc(metadata(g))}</small>"
                ),
            ]
        rows.append(cells)
    note = (
        "Each held-out image (left) and the lesion-metadata rows of the held-out patients most "
        "similar to it, best first; the picture beside a row is that lesion's own image."
    )
    if index is None:
        note += " (The store's shards were not found: ids and labels only.)"
    return f'<p class="note">{H.esc(note)}</p>' + H.table(head, rows)


# ------------------------------------------------------------------------------------------
# explain
# ------------------------------------------------------------------------------------------
def explain_section(explain_dir: Path) -> str:
    explain_dir = Path(explain_dir)
    attention = explain_dir / "attention.png"
    if not attention.is_file():
        raise SlimpError(f"--explain {explain_dir}: no attention.png (run slimp explain first)")
    out = ""
    meta = explain_dir / "attention.json"
    if meta.is_file():
        data = read_json(meta)
        definition = data.get("definition")
        if isinstance(definition, dict):
            definition = "; ".join(f"{k}: {v}" for k, v in definition.items())
        if definition:
            out += f'<p class="note">{H.esc(definition)}</p>'
    out += H.figure(
        attention.read_bytes(), "[CLS] attention of the last ViT block (slimp explain)."
    )
    importance = explain_dir / "importance.png"
    if importance.is_file():
        out += H.figure(importance.read_bytes(), "Metadata feature importance (TRACE attention).")
    return out


# ------------------------------------------------------------------------------------------
# the page
# ------------------------------------------------------------------------------------------
def build_run_report(
    run: str | os.PathLike,
    *,
    stores: Sequence[str | os.PathLike] = (),
    probe_jsons: Sequence[str | os.PathLike] = (),
    explain_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """The report page (HTML text) of a run and its stores; see the module docstring."""
    from ..eval.probe import run_probe

    run_dir = run_dir_of(run)
    config = read_json(run_dir / CONFIG)
    probe_reports = []
    for path in probe_jsons:
        report = read_json(path)
        if not isinstance(report, dict) or "results" not in report:
            raise SlimpError(f"--probe-json {path}: not a `slimp probe --json` report")
        probe_reports.append((Path(path), report))
    sections = [
        ("recipe", "Recipe and environment", recipe_section(config)),
        ("training", "Training", training_section(run_dir)),
    ]
    for path, report in probe_reports:
        sections.append(
            (
                f"probe-{len(sections)}",
                f"Probe: {path.name}",
                probe_table(report, n=None, n_pos=None, source=str(path)),
            )
        )
    for i, store_path in enumerate(stores):
        name = Path(store_path).name
        FeatureStore.open(store_path).close()  # a clear error before any computing
        pred = holdout_predictions(store_path, seed=seed)
        y = pred["y"]
        n, n_pos = len(y), int((y == 1).sum())
        body = ""
        if not probe_reports:
            report = run_probe(store_path, baseline=True, seeds=(seed,), device=device)
            body += probe_table(report, n=n, n_pos=n_pos, source=f"slimp probe {name} --baseline")
        if pred["proba"]:
            where = "held-out patients" if pred["split"] == "holdout" else f"{pred['split']} split"
            png, _ = roc_figure(pred, title=f"ROC, {name}, {where} (seed {seed})")
            body += H.figure(
                png, f"ROC: SLIMP vs metadata only, {n} test lesions ({n_pos} malignant)."
            )
        png, caption = tsne_figure(store_path, seed=seed)
        body += H.figure(png, caption)
        sections.append((f"store-{i}", f"Store {name}: probe, ROC, t-SNE", body))
        with FeatureStore.open(store_path) as store:
            retrievable = {"image", "lesion"} <= set(store.feature_names)
        if retrievable:
            body = retrieval_section(store_path, seed=seed, device=device)
            body += "<h3>Examples</h3>" + examples_section(store_path, seed=seed, device=device)
            sections.append((f"retrieval-{i}", f"Store {name}: retrieval", body))
    if explain_dir is not None:
        sections.append(("explain", "Attention maps", explain_section(Path(explain_dir))))
    subtitle = (
        f"run {run_dir} ({config.get('kind')}, {config.get('variant')}); stores: "
        f"{', '.join(str(s) for s in stores) or 'none'}; written by slimp {__version__}"
    )
    return H.page(f"slimp report: {run_dir.name}", sections, subtitle=subtitle)


def write_run_report(run: str | os.PathLike, out: str | os.PathLike, **options) -> Path:
    """Build the page and write it to `out` atomically (a temporary name, then renamed)."""
    out = prepare_output_file(out, "--out")
    text = build_run_report(run, **options)
    external = H.external_references(text)
    if external:  # never expected: every figure is inline; a guard on the page's promise
        raise SlimpError(f"report page would fetch {external[0]!r}; not written")
    write_text(out, text)
    return out
