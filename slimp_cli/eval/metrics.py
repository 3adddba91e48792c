"""Metrics: classification (scikit-learn), rank-based retrieval, aggregation over seeds.

All values are fractions in [0, 1] (the paper prints Acc/BA/R@k as percentages).
Undefined values (AUC with a single class in the test split) are NaN and come with a warning;
`summarize` averages over the seeds where the value is defined and JSON writes NaN as null.
"""

from __future__ import annotations

import math
import warnings as pywarnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.special import digamma
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from . import WarningLog

RETRIEVAL_KS = (1, 5, 10, 15, 20, 100)
PERCENTILES = (2, 10, 25, 50, 75, 90, 98)


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    task: str,
    class_names: Sequence[str] | None = None,
    warnings: WarningLog | None = None,
) -> dict[str, float]:
    """Metrics of predicted class probabilities.

    Shape: y_true [n] ints in 0..C-1; proba [n, C] (columns = all classes of the task, a class
    the classifier never saw has a zero column). Prediction = argmax of proba.
    binary (C = 2, positive class 1): accuracy, balanced_accuracy, f1, auc.
    multiclass: accuracy, balanced_accuracy, f1 (= f1_macro, so every result has an "f1"),
    f1_macro, f1_weighted, auc (one-vs-rest, macro over the classes present in y_true).
    """
    with pywarnings.catch_warnings():
        # sklearn's UserWarnings (class in y_pred not in y_true, ...) are noise here: the
        # cases that matter are reported through `warnings` below.
        pywarnings.simplefilter("ignore", UserWarning)
        return _classification_metrics(
            y_true, proba, task=task, class_names=class_names, warnings=warnings
        )


def _classification_metrics(y_true, proba, *, task, class_names, warnings) -> dict[str, float]:
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1)
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
    }
    if task == "binary":
        out["f1"] = float(f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))
        out["auc"] = _binary_auc(y_true == 1, proba[:, 1], "auc", warnings)
    elif task == "multiclass":
        labels = np.arange(proba.shape[1])
        out["f1_macro"] = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
        out["f1"] = out["f1_macro"]
        out["f1_weighted"] = float(f1_score(y_true, y_pred, average="weighted", zero_division=0))
        out["auc"] = ovr_auc(
            y_true, proba, labels=labels, class_names=class_names, warnings=warnings
        )
    else:
        raise ValueError(f"unknown task {task!r}")
    return out


def ovr_auc(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    warnings: WarningLog | None = None,
) -> float:
    """One-vs-rest ROC AUC, macro average over the classes present in y_true.

    Equals sklearn's roc_auc_score(multi_class="ovr", average="macro") when every class is
    present; sklearn refuses a test split missing a class, so absent classes are skipped here
    (with a warning) rather than failing the whole evaluation.
    """
    present = [c for c in labels if np.any(y_true == c)]
    absent = [c for c in labels if c not in present]
    if absent and warnings is not None:
        names = [class_names[c] if class_names else str(c) for c in absent]
        warnings.add(
            f"class(es) {', '.join(names)} absent from the test split: AUC averaged over the {len(present)} present classes"
        )
    if len(present) < 2:
        if warnings is not None:
            warnings.add("test split holds a single class: AUC undefined (reported as null)")
        return math.nan
    return float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in present]))


def _binary_auc(
    y_bool: np.ndarray, score: np.ndarray, what: str, warnings: WarningLog | None
) -> float:
    if y_bool.all() or not y_bool.any():
        if warnings is not None:
            warnings.add(f"test split holds a single class: {what} undefined (reported as null)")
        return math.nan
    return float(roc_auc_score(y_bool, score))


def summarize(runs: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """Mean and population std (ddof=0, so one seed gives std 0) per metric over seeds.

    NaN runs are ignored; a metric NaN in every run is {"mean": None, "std": None}.
    """
    runs = list(runs)
    out: dict[str, dict[str, float | None]] = {}
    for key in runs[0] if runs else []:
        vals = np.array([r[key] for r in runs], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[key] = (
            {"mean": float(vals.mean()), "std": float(vals.std())}
            if len(vals)
            else {"mean": None, "std": None}
        )
    return out


def rank_metrics(
    greater: np.ndarray, tied: np.ndarray | None = None, *, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[str, float]:
    """Retrieval metrics of the best relevant item of each query, ties broken at random.

    `greater`: non-relevant items strictly more similar; `tied`: non-relevant items exactly as
    similar (0 when None). The rank is then uniform on g+1 .. g+t+1, and every metric is its
    expectation under that random tie-breaking (one relevant item, so the ideal DCG is 1):
    R@k = P(rank <= k) = clip((k - g) / (t + 1), 0, 1); NDCG@k = E[1/log2(rank + 1); rank <= k];
    mAP = E[1/rank] (average precision of a single relevant item); mean_rank = g + 1 + t/2
    (the mid-rank: a tie counts half). Metadata embeddings are functions of discrete inputs,
    so equal metadata gives equal vectors: a "strictly better" rule would count every
    duplicate as a hit (R@1 = 1 on 20 identical vectors, where chance is 1/20).

    Examples:
        >>> rank_metrics(np.array([0]), np.array([19]), ks=(1,))["R@1"]
        0.05
    """
    g = np.asarray(greater, dtype=np.int64)
    t = np.zeros_like(g) if tied is None else np.asarray(tied, dtype=np.int64)
    if g.size == 0 or g.shape != t.shape or np.any(g < 0) or np.any(t < 0):
        raise ValueError("greater/tied must be equal-length, non-empty, non-negative counts")
    width = (t + 1).astype(np.float64)
    first, last = g + 1, g + t + 1  # the rank's range
    # sums of 1/log2(r + 1) over r = 1..n as a cumulative table (n up to the largest k)
    kmax = max(ks)
    dcg = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(1, kmax + 1) + 1.0))])
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(np.mean(np.clip((k - g) / width, 0.0, 1.0)))
    for k in ks:
        hi = np.minimum(last, k)
        gain = np.where(
            hi >= first, dcg[np.clip(hi, 0, kmax)] - dcg[np.clip(first - 1, 0, kmax)], 0.0
        )
        out[f"NDCG@{k}"] = float(np.mean(gain / width))
    # E[1/rank] = (H(last) - H(first - 1)) / (t + 1), harmonic numbers via digamma
    harmonic = digamma(last + 1.0) - digamma(first.astype(np.float64))
    out["mAP"] = float(np.mean(harmonic / width))
    out["mean_rank"] = float(np.mean(g + 1 + t / 2.0))
    return out


def percentiles(values: np.ndarray, *, qs: Sequence[int] = PERCENTILES) -> dict[str, float]:
    """{"2": p2, "10": p10, ...} of a 1-D array (numpy's linear interpolation)."""
    values = np.asarray(values, dtype=np.float64)
    return {str(q): float(v) for q, v in zip(qs, np.percentile(values, qs))}


def class_metrics(y_true: np.ndarray, proba: np.ndarray, c: int) -> dict[str, float]:
    """One class's one-vs-rest metrics (SM3 paper Table I): AUC of its probability, and the
    sensitivity (recall), specificity and precision of predicting it (argmax of proba).

    Shape: y_true [n] ints, proba [n, C], c in 0..C-1. AUC is NaN when the test rows hold only
    one side of class c; precision is 0 when c is never predicted (torchmetrics' and sklearn's
    zero_division=0), sensitivity NaN without a positive row, specificity NaN without a negative.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    pos, pred = y_true == c, proba.argmax(axis=1) == c
    tp, fp = int(np.sum(pos & pred)), int(np.sum(~pos & pred))
    fn, tn = int(np.sum(pos & ~pred)), int(np.sum(~pos & ~pred))
    return {
        "class_auc": float(roc_auc_score(pos, proba[:, c]))
        if 0 < pos.sum() < len(pos)
        else math.nan,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
    }
