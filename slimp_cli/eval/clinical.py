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

from ..core.errors import SlimpError

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
    y_true: np.ndarray,
    score: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    auc_only: bool = False,
) -> dict[str, np.ndarray]:
    """Every metric of CURVE_METRICS for a batch of row weightings (bootstrap resamples);
    `auc_only`: {"auc"} alone (the subgroup tables ask for it per group and seed).

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
    b, n = w.shape
    if n == 0:
        return {k: np.full(b, math.nan) for k in (("auc",) if auc_only else CURVE_METRICS)}
    order = np.argsort(-s, kind="stable")
    s, y, w = s[order], y[order], w[:, order]
    # cumulative weight called positive, and of it malignant, at each distinct score from the
    # top (the last row of each run of tied scores); column 0: nothing called positive
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), n - 1]
    called, tp = np.cumsum(w, axis=1), np.cumsum(w * y, axis=1)
    if len(ends) < n:
        called, tp = called[:, ends], tp[:, ends]
    zero = np.zeros((b, 1))
    called, tp = np.hstack([zero, called]), np.hstack([zero, tp])
    fp = called - tp
    pos, neg = tp[:, -1:], fp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr, fpr = tp / pos, fp / neg
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    d_tpr = np.diff(tpr, axis=1)
    # area of each ROC segment measured along TPR: int (1 - FPR) dTPR, FPR linear in between;
    # summed it is the trapezoidal AUC (= int TPR dFPR over the same piecewise-linear curve)
    seg = np.cumsum(d_tpr * (1.0 - (fpr[:, 1:] + fpr[:, :-1]) / 2.0), axis=1)
    out: dict[str, np.ndarray] = {"auc": seg[:, -1]}
    both = (pos[:, 0] > 0) & (neg[:, 0] > 0)
    if auc_only:
        return {"auc": np.where(both, out["auc"], math.nan)}
    out["ap"] = np.where(pos[:, 0] > 0, np.sum(d_tpr * precision[:, 1:], axis=1), math.nan)
    out["pauc_80"] = _area_above_tpr(tpr, fpr, seg, MIN_TPR)
    last = tpr.shape[1] - 1
    for level in OPERATING_POINTS:
        # TPR and FPR never decrease along the curve: the best sensitivity meeting a
        # specificity is at the last point that meets it, the best specificity meeting a
        # sensitivity at the first
        k = np.clip(np.sum(fpr <= (1.0 - level) + _TOL, axis=1) - 1, 0, last)
        out[f"sens_at_spec{round(100 * level)}"] = _at(tpr, k)
    for level in OPERATING_POINTS:
        k = np.clip(last + 1 - np.sum(tpr >= level - _TOL, axis=1), 0, last)
        out[f"spec_at_sens{round(100 * level)}"] = 1.0 - _at(fpr, k)
    for key in CURVE_METRICS:
        if key != "ap":
            out[key] = np.where(both, out[key], math.nan)
    return out


def _at(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """a[i, k[i]] for each row i. Shape: [b, m], [b] -> [b]."""
    return np.take_along_axis(a, k[:, None], axis=1)[:, 0]


def _area_above_tpr(
    tpr: np.ndarray, fpr: np.ndarray, seg: np.ndarray, min_tpr: float
) -> np.ndarray:
    """int_{min_tpr}^{1} (1 - FPR(t)) dt on each piecewise-linear ROC. Shape: tpr, fpr [b, k],
    seg [b, k-1] the cumulative segment areas along TPR -> [b].

    The segments ending above min_tpr are a suffix: the one crossing min_tpr contributes its
    part above it, a trapezoid of height t1 - lo and mean width 1 - (FPR(lo) + f1) / 2 (FPR
    linear in TPR along the segment), every later one its whole area. Horizontal segments
    (FPR grows at fixed TPR) add no area.
    """
    j = np.clip(np.sum(tpr[:, 1:] <= min_tpr, axis=1), 0, seg.shape[1] - 1)
    t0, t1, f0, f1 = _at(tpr, j), _at(tpr, j + 1), _at(fpr, j), _at(fpr, j + 1)
    lo = np.maximum(t0, min_tpr)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(t1 > t0, (lo - t0) / (t1 - t0), 0.0)
    f_lo = f0 + (f1 - f0) * frac
    part = np.where(t1 > lo, (t1 - lo) * (1.0 - (f_lo + f1) / 2.0), 0.0)
    return seg[:, -1] - _at(seg, j) + part


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
