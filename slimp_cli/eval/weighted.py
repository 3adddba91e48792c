"""Every probe metric under row weights: what one bootstrap resample of the test rows scores.

A resample that draws a patient twice counts each of its rows twice, so a batch of b resamples
is a weight matrix [b, n] and each metric a function of weighted counts, computed for all b at
once. With weights of 1 every function equals its scikit-learn counterpart (accuracy_score,
balanced_accuracy_score, f1_score, roc_auc_score, average_precision_score, brier_score_loss);
with integer weights it equals them with sample_weight (tests/test_clinical.py checks both).

Keys: those of `metrics.classification_metrics` for the task, plus the malignant task's
`sensitivity`, `specificity` (at the classifier's decision), CURVE_METRICS and
CALIBRATION_METRICS (eval/clinical.py, eval/calibration.py).
"""

from __future__ import annotations

import math

import numpy as np

from .calibration import CALIBRATION_METRICS, calibration_metrics
from .clinical import CURVE_METRICS, MalignantTask, curve_metrics

DECISION_METRICS = ("sensitivity", "specificity")
# the metrics a result gains beyond classification_metrics (the malignant task's)
TASK_METRICS = (*DECISION_METRICS, *CURVE_METRICS[1:], *CALIBRATION_METRICS)


def _ones(n: int, weights: np.ndarray | None) -> np.ndarray:
    return np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64)


def confusion(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted confusion matrices. Shape: y_true, y_pred [n] in 0..C-1, weights [b, n] ->
    [b, C, C] (row = true class, column = predicted)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    w = _ones(len(y_true), weights)
    cell = np.zeros((len(y_true), n_classes * n_classes))
    cell[np.arange(len(y_true)), y_true * n_classes + y_pred] = 1.0
    return (w @ cell).reshape(len(w), n_classes, n_classes)


def decision_metrics(conf: np.ndarray, *, task: str) -> dict[str, np.ndarray]:
    """accuracy, balanced_accuracy and f1 (binary: of class 1; multiclass: f1 = f1_macro,
    f1_weighted) from confusion matrices, as sklearn defines them with zero_division=0.

    Shape: conf [b, C, C] -> {metric: [b]}. Balanced accuracy averages the recall of the
    classes present in y_true; the macro f1 averages the classes present in y_true or y_pred.
    """
    tp = np.diagonal(conf, axis1=1, axis2=2)
    support, predicted = conf.sum(axis=2), conf.sum(axis=1)
    total = conf.sum(axis=(1, 2))
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        out = {
            "accuracy": tp.sum(axis=1) / total,
            "balanced_accuracy": recall.sum(axis=1) / present.sum(axis=1),
        }
        if task == "binary":
            out["f1"] = f1[:, 1]
        else:
            seen = (support + predicted) > 0
            out["f1_macro"] = (f1 * seen).sum(axis=1) / seen.sum(axis=1)
            out["f1"] = out["f1_macro"]
            out["f1_weighted"] = (f1 * support).sum(axis=1) / support.sum(axis=1)
    return out


def sensitivity_specificity(
    truth: np.ndarray, decision: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Sensitivity and specificity of a yes/no decision. Shape: [n] bool, [n] bool, [b, n] ->
    {"sensitivity": [b], "specificity": [b]}; NaN without a positive / negative row."""
    t, d = np.asarray(truth, dtype=bool), np.asarray(decision, dtype=bool)
    w = _ones(len(t), weights)
    pos, neg = w @ t, w @ ~t
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sensitivity": np.where(pos > 0, (w @ (t & d)) / pos, math.nan),
            "specificity": np.where(neg > 0, (w @ (~t & ~d)) / neg, math.nan),
        }


def ovr_auc(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None):
    """Macro one-vs-rest AUC over the classes present (metrics.ovr_auc's rule) per resample.
    Shape: y_true [n], proba [n, C], weights [b, n] -> [b] (NaN with fewer than 2 classes)."""
    y_true = np.asarray(y_true)
    w = _ones(len(y_true), weights)
    per_class = [
        curve_metrics(y_true == c, proba[:, c], w)["auc"]
        for c in range(proba.shape[1])
        if np.any(y_true == c)
    ]
    if not per_class:
        return np.full(len(w), math.nan)
    stacked = np.vstack(per_class)
    defined = ~np.isnan(stacked)
    # a resample that kept fewer than two classes has no defined per-class AUC at all
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            defined.any(axis=0), np.nansum(stacked, axis=0) / defined.sum(axis=0), math.nan
        )


def task_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    task: MalignantTask,
    weights: np.ndarray | None = None,
    *,
    with_auc: bool = False,
) -> dict[str, np.ndarray]:
    """The malignant task's TASK_METRICS (and its "auc" with `with_auc`). Shape: y_true [n]
    class ids, proba [n, C], weights [b, n] -> {metric: [b]}."""
    truth, score = task.truth(y_true), task.score(proba)
    w = _ones(len(truth), weights)
    out = sensitivity_specificity(truth, task.decision(proba), w)
    curves = curve_metrics(truth, score, w)
    out.update({k: curves[k] for k in CURVE_METRICS[int(not with_auc) :]})
    out.update(calibration_metrics(truth, score, w))
    return out


def weighted_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    task: str,
    malignant: MalignantTask | None,
    weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every metric of a probe result for a batch of row weightings.

    Shape: y_true [n] class ids, proba [n, C], weights [b, n] (None = one resample of ones) ->
    {metric: [b] float64}. `task` "binary" or "multiclass" (as classification_metrics);
    `malignant` None leaves the malignant task's metrics out.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    w = _ones(len(y_true), weights)
    out = decision_metrics(confusion(y_true, proba.argmax(axis=1), proba.shape[1], w), task=task)
    extra = {} if malignant is None else task_metrics(y_true, proba, malignant, w, with_auc=True)
    if task == "binary" and malignant == MalignantTask.binary():
        out["auc"] = extra["auc"]  # the same curve: P(class 1) is P(malignant)
    elif task == "binary":
        out["auc"] = curve_metrics(y_true == 1, proba[:, 1], w)["auc"]
    else:
        out["auc"] = ovr_auc(y_true, proba, w)
    out.update({k: v for k, v in extra.items() if k != "auc"})
    return out
