"""PNG figures for `probe --plots` and `retrieve --plots` (matplotlib, Agg canvas, no pyplot).

Figures are built on `matplotlib.figure.Figure` directly, so nothing touches a global backend or
needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from ..core.errors import SlimpError
from ..core.paths import atomic_path


def ensure_dir(path: str | Path) -> Path:
    """Create the figure folder (and parents); a user error if impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlimpError(f"--plots {path}: cannot create folder ({e.strerror})") from None
    return path


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # never a half-written PNG; a full disk is one line
        fig.savefig(tmp, dpi=120, format="png")


def roc_curves(
    path: Path, y_true: np.ndarray, proba: np.ndarray, *, class_names: Sequence[str], title: str
) -> None:
    """ROC curve of the positive class (2 classes) or one-vs-rest per class present.

    Shape: y_true [n] ints, proba [n, C].
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    shown = [1] if proba.shape[1] == 2 else list(range(proba.shape[1]))
    for c in shown:
        pos = y_true == c
        if pos.all() or not pos.any():
            continue  # a class absent from the test split has no curve
        name = class_names[c] if proba.shape[1] > 2 else f"{class_names[1]} vs {class_names[0]}"
        RocCurveDisplay.from_predictions(
            pos, proba[:, c], name=name, ax=ax, plot_chance_level=c == shown[0]
        )
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(f"ROC curve\n{title}", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def roc_overlay(path: Path, curves: Mapping[str, tuple], *, positive: str, title: str) -> list[str]:
    """Every method's ROC of a 2-class task on one plot (e.g. the model's features against the
    metadata-only baseline, on the same test rows), n and the positives in the title, each
    method's AUC in the legend. Returns the legend labels.

    Shape: curves {method: (y_true [n] ints 0/1, proba [n, 2])}.
    """
    from sklearn.metrics import roc_auc_score

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    labels, n, n_pos = [], 0, 0
    for i, (method, (y_true, proba)) in enumerate(curves.items()):
        pos = np.asarray(y_true) == 1
        if pos.all() or not pos.any():
            continue
        n, n_pos = len(pos), int(pos.sum())
        label = f"{method} (AUC {roc_auc_score(pos, proba[:, 1]):.3f})"
        RocCurveDisplay.from_predictions(
            pos, proba[:, 1], name=method, ax=ax, plot_chance_level=i == 0
        )
        ax.get_lines()[-1].set_label(label)
        labels.append(label)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(f"ROC, {positive}: n = {n} ({n_pos} positive)\n{title}", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
    return labels


def confusion(
    path: Path, y_true: np.ndarray, y_pred: np.ndarray, *, class_names: Sequence[str], title: str
) -> None:
    """Confusion matrix (counts). Shape: y_true [n], y_pred [n] ints in 0..C-1."""
    size = max(4.5, 0.6 * len(class_names) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=np.arange(len(class_names)),
        display_labels=list(class_names),
        ax=ax,
        colorbar=False,
        xticks_rotation=45,
    )
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"Confusion matrix\n{title}", fontsize="medium")
    _save(fig, path)


def similarity_histograms(
    path: Path, distributions: Mapping[str, np.ndarray], *, title: str
) -> None:
    """Overlaid density histograms of cosine similarities with dashed median lines (paper Fig. 3)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    # Bins over the range the values actually span (an untrained model's similarities sit in a
    # narrow band around 0 that fixed [-1, 1] bins would flatten into two or three bars).
    present = [np.asarray(v).ravel() for v in distributions.values() if np.asarray(v).size]
    lo = min((float(v.min()) for v in present), default=-1.0)
    hi = max((float(v.max()) for v in present), default=1.0)
    pad = max(0.02, 0.05 * (hi - lo))
    bins = np.linspace(max(-1.0, lo - pad), min(1.0, hi + pad), 81)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for (name, values), color in zip(distributions.items(), colors):
        values = np.asarray(values)
        if values.size == 0:
            continue
        ax.hist(
            values,
            bins=bins,
            density=True,
            alpha=0.45,
            color=color,
            label=f"{name} (n={values.size})",
        )
        ax.axvline(float(np.median(values)), color=color, linestyle="--", linewidth=1.5)
    ax.set_xlabel("Cosine similarity (image vs metadata)")
    ax.set_ylabel("Density")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    _save(fig, path)


def reliability(path: Path, truth: np.ndarray, score: np.ndarray, *, title: str) -> None:
    """Reliability diagram of P(malignant): observed malignant fraction against the mean
    predicted probability in 15 equal-width bins (eval/calibration.py's ECE bins), with the
    ECE and Brier score in the legend and the rows per bin below.

    Shape: truth [n] bool, score [n] in [0, 1].
    """
    from sklearn.calibration import CalibrationDisplay

    from .calibration import ECE_BINS, bin_ids, calibration_metrics

    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    fig = Figure(figsize=(5.5, 6.5))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    if truth.any() and not truth.all():
        cal = calibration_metrics(truth, score)
        name = f"ECE {cal['ece'][0]:.3f}, Brier {cal['brier'][0]:.3f}"
        CalibrationDisplay.from_predictions(
            truth, score, n_bins=ECE_BINS, strategy="uniform", ax=ax, name=name
        )
    else:  # sklearn refuses a single class; the diagram says why it is empty
        ax.plot([0, 1], [0, 1], "k:", label="Perfectly calibrated")
        ax.text(0.5, 0.5, "a single class: no diagram", ha="center", va="center")
    ax.set_xlabel("")
    ax.set_ylabel("Observed malignant fraction")
    ax.set_title(f"Reliability of P(malignant), {ECE_BINS} bins\n{title}", fontsize="medium")
    ax.legend(loc="upper left", fontsize="small")
    counts = np.bincount(bin_ids(score), minlength=ECE_BINS)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    hist.bar(edges[:-1], counts, width=1.0 / ECE_BINS, align="edge", color="tab:gray")
    hist.set_xlabel("Mean predicted P(malignant)")
    hist.set_ylabel("Rows")
    _save(fig, path)
