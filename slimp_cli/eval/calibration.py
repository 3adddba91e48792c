"""Calibration of P(malignant): expected calibration error (15 bins) and the Brier score.

- `ece`: sum over 15 equal-width bins of [0, 1] of (n_bin / n) |mean(y) - mean(p)| in the bin;
  rows are binned as sklearn's calibration_curve(strategy="uniform") bins them (a probability
  on an inner edge goes to the lower bin), so the figure matches the reliability diagram that
  `probe --plots` draws with sklearn's CalibrationDisplay.
- `brier`: mean (p - y)^2 (= sklearn's brier_score_loss).
Both take resample weights the way eval/clinical.py's curve metrics do.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
CALIBRATION_METRICS = ("ece", "brier")


def bin_ids(score: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Shape: score [n] in [0, 1] -> [n] bin index in 0..n_bins-1 (sklearn's uniform bins)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(score, dtype=np.float64))


def calibration_metrics(
    y_true: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """ECE and Brier score of P(malignant) for a batch of row weightings.

    Shape: y_true [n] bool, score [n] in [0, 1], weights [b, n] (None = all ones) ->
    {"ece": [b], "brier": [b]}; NaN for a resample of total weight 0.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(score, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    onehot = np.zeros((len(p), ECE_BINS))
    onehot[np.arange(len(p)), bin_ids(p)] = 1.0
    gap = np.abs(w @ (onehot * y[:, None]) - w @ (onehot * p[:, None]))  # |sum y - sum p| per bin
    with np.errstate(divide="ignore", invalid="ignore"):
        # (n_bin / n) |mean y - mean p| = |sum y - sum p| / n
        ece = np.where(total > 0, gap.sum(axis=1) / total, math.nan)
        brier = np.where(total > 0, (w @ (p - y) ** 2) / total, math.nan)
    return {"ece": ece, "brier": brier}
