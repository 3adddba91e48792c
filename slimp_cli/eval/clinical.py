"""Ranking metrics of the malignant task: AUC, average precision, ISIC 2024 partial AUC and
sensitivity / specificity at fixed operating points, for one score or many resample weights.

The malignant task. With `--label binary` the score is P(malignant) and the truth the label.
With `--label multiclass` the classifier predicts diagnoses; the clinical metrics are then of
the malignant task all the same: score = the summed probability of the malignant classes,
truth = whether the row's class is malignant, decision = whether the predicted class is
(`MalignantTask`). Only `auc`, `accuracy`, `balanced_accuracy` and the f1 scores of a multiclass
result stay about the diagnoses.

Definitions (every one on the ROC of the test rows, ties counted as sklearn does: one
diagonal step per tied score):
- `auc`: trapezoidal area under the ROC (= sklearn.metrics.roc_auc_score).
- `ap`: average precision, sum over thresholds of (R_k - R_{k-1}) P_k (= sklearn's
  average_precision_score; no interpolation).
- `pauc_80`: area of the ROC above 80% TPR, range 0 to 0.2, exactly as the ISIC 2024 challenge
  computes it (`isic_pauc`: labels and scores flipped, sklearn's McClish-standardised partial
  AUC at max_fpr = 0.2, un-standardised). The same area is int_{0.8}^{1} (1 - FPR(t)) dt on
  the piecewise-linear ROC, which `curve_metrics` computes for many resamples at once.
- `sens_at_spec90` / `95`: the highest TPR among the thresholds whose specificity is at least
  90% / 95%; `spec_at_sens90` / `95`: the highest specificity among the thresholds with TPR at
  least 90% / 95%. Thresholds only, no interpolation between them: an operating point a
  threshold can reach. Read off the test ROC, so they are optimistic next to a threshold fixed
  on training data; the bootstrap interval shows how much they move.
A metric is NaN where it is undefined: every one needs both classes except `ap`, which needs a
positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import SlimpError

MIN_TPR = 0.8  # ISIC 2024: partial AUC above 80% TPR
OPERATING_POINTS = (0.90, 0.95)
CURVE_METRICS = (
    "auc",
    "ap",
    "pauc_80",
    "sens_at_spec90",
    "sens_at_spec95",
    "spec_at_sens90",
    "spec_at_sens95",
)
# rates are ratios of weighted counts; a rate exactly at the bound must count as meeting it
_TOL = 1e-9


def isic_pauc(
    y_true: np.ndarray,
    score: np.ndarray,
    *,
    min_tpr: float = MIN_TPR,
    sample_weight: np.ndarray | None = None,
) -> float:
    """Partial AUC above `min_tpr` TPR, the ISIC 2024 (SLICE-3D) challenge metric.

    The challenge's Kaggle metric, line for line: flip the labels (1 - y) and the scores
    (1 - s), take sklearn's partial AUC at max_fpr = 1 - min_tpr (McClish-standardised to
    [0.5, 1]) and map it back to its raw area in [0, max_fpr]. Shape: y_true [n] 0/1,
    score [n] -> float in [0, 1 - min_tpr]. NaN when a class is absent.

    Examples:
        >>> round(isic_pauc(np.array([1, 0]), np.array([0.9, 0.1])), 6)  # perfect ranking
        0.2
    """
    y_true = np.asarray(y_true).astype(np.int64)
    if len(np.unique(y_true)) < 2:
        return math.nan
    v_gt = np.abs(y_true - 1)
    v_pred = 1.0 - np.asarray(score, dtype=np.float64)
    max_fpr = abs(1 - min_tpr)
    scaled = roc_auc_score(v_gt, v_pred, max_fpr=max_fpr, sample_weight=sample_weight)
    # change scale from [0.5, 1.0] to [0.5 * max_fpr**2, max_fpr]
    return float(0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5))


def curve_metrics(
    y_true: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every metric of CURVE_METRICS for a batch of row weightings (bootstrap resamples).

    Shape: y_true [n] bool, score [n], weights [b, n] non-negative (row counts of b resamples;
    None = one resample of weight 1 per row) -> {metric: [b] float64}. The rows are sorted once;
    each resample's ROC is the cumulative weighted count of positives and negatives over the
    distinct scores, so b resamples cost b vectorised passes over n, not b sorts.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != len(y) or s.shape != y.shape:
        raise ValueError(f"curve_metrics: y {y.shape}, score {s.shape}, weights {w.shape}")
    order = np.argsort(-s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, int)
    b = len(w)
    zero = np.zeros((b, 1))
    if len(s) == 0:
        return {k: np.full(b, math.nan) for k in CURVE_METRICS}
    # cumulative weighted positives / negatives at each distinct score, from the top; column 0
    # is the threshold above every score (nothing called positive)
    tp = np.hstack([zero, np.add.reduceat(w * y, starts, axis=1).cumsum(axis=1)])
    fp = np.hstack([zero, np.add.reduceat(w * ~y, starts, axis=1).cumsum(axis=1)])
    pos, neg = tp[:, -1:], fp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr, fpr = tp / pos, fp / neg
        called = tp + fp
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    both = (pos[:, 0] > 0) & (neg[:, 0] > 0)
    out: dict[str, np.ndarray] = {}
    d_fpr, d_tpr = np.diff(fpr, axis=1), np.diff(tpr, axis=1)
    out["auc"] = np.sum(d_fpr * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)
    out["ap"] = np.where(pos[:, 0] > 0, np.sum(d_tpr * precision[:, 1:], axis=1), math.nan)
    out["pauc_80"] = _area_above_tpr(tpr, fpr, MIN_TPR)
    for level in OPERATING_POINTS:
        pct = round(100 * level)
        meets_spec = fpr <= (1.0 - level) + _TOL
        out[f"sens_at_spec{pct}"] = np.max(np.where(meets_spec, tpr, -np.inf), axis=1)
    for level in OPERATING_POINTS:
        pct = round(100 * level)
        meets_sens = tpr >= level - _TOL
        out[f"spec_at_sens{pct}"] = np.max(np.where(meets_sens, 1.0 - fpr, -np.inf), axis=1)
    for key in CURVE_METRICS:
        if key != "ap":
            out[key] = np.where(both, out[key], math.nan)
    return out


def _area_above_tpr(tpr: np.ndarray, fpr: np.ndarray, min_tpr: float) -> np.ndarray:
    """int_{min_tpr}^{1} (1 - FPR(t)) dt on each piecewise-linear ROC. Shape: [b, k] -> [b].

    Each segment from point j-1 to j contributes the part of it with TPR above min_tpr: a
    trapezoid of height (t1 - lo) and mean width 1 - (FPR(lo) + f1) / 2, FPR linear in TPR
    along the segment. Horizontal segments (FPR grows at fixed TPR) add no area.
    """
    t0, t1, f0, f1 = tpr[:, :-1], tpr[:, 1:], fpr[:, :-1], fpr[:, 1:]
    lo = np.maximum(t0, min_tpr)
    rising = t1 > lo
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(t1 > t0, (lo - t0) / (t1 - t0), 0.0)
    f_lo = f0 + (f1 - f0) * frac
    area = np.where(rising, (t1 - lo) * (1.0 - (f_lo + f1) / 2.0), 0.0)
    return np.sum(area, axis=1)


@dataclass(frozen=True)
class MalignantTask:
    """Which of a classifier's classes are malignant: the view every clinical metric takes.

    `malignant[c]` is True for the malignant classes of the classifier's columns (binary
    probes: [False, True]). Shape conventions: y [n] class ids, proba [n, C].
    """

    malignant: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.malignant) < 2:
            raise ValueError("MalignantTask needs at least two classes")

    @classmethod
    def binary(cls) -> MalignantTask:
        return cls(malignant=(False, True))

    @classmethod
    def from_rows(
        cls, y: np.ndarray, flags: np.ndarray, class_names: Sequence[str]
    ) -> MalignantTask:
        """The malignant classes of a multiclass label, read off the rows.

        Shape: y [n] class ids in 0..C-1, flags [n] the store's malignant (1, 0, -1 unknown).
        A class is malignant when every row of it with a known flag says so. SlimpError when
        a class has rows of both kinds, or none known: the malignant task is then undefined.
        """
        y, flags = np.asarray(y), np.asarray(flags)
        out = []
        for c, name in enumerate(class_names):
            known = np.unique(flags[(y == c) & (flags >= 0)])
            if len(known) != 1:
                why = "both malignant and benign rows" if len(known) else "no known malignancy"
                raise SlimpError(
                    f"class '{name}' has {why}: the malignant task is undefined for this label"
                )
            out.append(bool(known[0] == 1))
        return cls(malignant=tuple(out))

    @property
    def columns(self) -> np.ndarray:
        return np.asarray(self.malignant, dtype=bool)

    def truth(self, y: np.ndarray) -> np.ndarray:
        """Shape: y [n] class ids -> [n] bool (the row's class is malignant)."""
        return self.columns[np.asarray(y)]

    def score(self, proba: np.ndarray) -> np.ndarray:
        """Shape: proba [n, C] -> [n] P(malignant), the summed malignant columns (clipped
        into [0, 1] against float rounding)."""
        return np.clip(np.asarray(proba, dtype=np.float64)[:, self.columns].sum(axis=1), 0, 1)

    def decision(self, proba: np.ndarray) -> np.ndarray:
        """Shape: proba [n, C] -> [n] bool: the predicted (argmax) class is malignant."""
        return self.columns[np.asarray(proba).argmax(axis=1)]
