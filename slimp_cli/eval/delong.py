"""DeLong's test for the difference of two correlated AUCs (DeLong et al. 1988), computed with
the fast midrank algorithm of Sun & Xu (IEEE SPL 21(11), 2014).

For m positives X_i and n negatives Y_j scored by each of k models, psi(x, y) = 1 if x > y,
1/2 if x = y, else 0. The structural components are V10_i = (1/n) sum_j psi(X_i, Y_j) and
V01_j = (1/m) sum_i psi(X_i, Y_j); AUC = mean(V10) = mean(V01), and the covariance of the k
AUCs is S10 / m + S01 / n (S = the sample covariances of the components, ddof 1). Sun & Xu
get every V from midranks: V10_i = (rank of X_i among all - rank among the positives) / n,
V01_j = 1 - (rank of Y_j among all - rank among the negatives) / m: O((m + n) log(m + n))
instead of O(mn).

The test treats rows as independent. Lesions of one patient are not, so with several lesions
per patient the p-value is too small; the patient-grouped bootstrap interval of the same
difference (eval/compare.py) is the figure that accounts for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


def structural_components(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aucs [k], v10 [k, m], v01 [k, n]) of k score vectors by midranks (Sun & Xu).

    Shape: y_true [n_rows] bool, scores [k, n_rows]. Needs a positive and a negative row.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative row")
    tz = rankdata(np.hstack([pos, neg]), axis=1)  # midranks among all rows
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def auc_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong covariance of the AUCs: S10 / m + S01 / n. Shape: [k, m], [k, n] -> [k, k]."""
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(v10), len(v10)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(v01), len(v01)))
    return s10 / m + s01 / n


@dataclass(frozen=True)
class DelongResult:
    auc_a: float
    auc_b: float
    delta: float  # auc_a - auc_b
    se: float  # DeLong standard error of the difference
    z: float
    p: float  # two-sided

    def to_dict(self) -> dict:
        return {
            "auc_a": self.auc_a,
            "auc_b": self.auc_b,
            "delta_auc": self.delta,
            "se": self.se,
            "z": self.z,
            "p": self.p,
        }


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DelongResult:
    """Two-sided DeLong test of AUC(a) = AUC(b) on the same rows.

    Shape: y_true [n] bool, score_a [n], score_b [n]. A zero variance (e.g. the same scores
    twice) gives p = 1 when the AUCs are equal and p = 0 otherwise; NaN fields when a class is
    absent.
    """
    y = np.asarray(y_true, dtype=bool)
    if y.all() or not y.any():
        nan = math.nan
        return DelongResult(nan, nan, nan, nan, nan, nan)
    aucs, v10, v01 = structural_components(y, np.vstack([score_a, score_b]))
    cov = auc_covariance(v10, v01)
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ cov @ contrast)
    delta = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        same = abs(delta) < 1e-12
        return DelongResult(
            float(aucs[0]),
            float(aucs[1]),
            delta,
            0.0,
            0.0 if same else math.copysign(math.inf, delta),
            float(same),
        )
    se = math.sqrt(var)
    z = delta / se
    return DelongResult(float(aucs[0]), float(aucs[1]), delta, se, z, float(2.0 * norm.sf(abs(z))))
