"""Cosine k-nearest-neighbour classifier (weighted votes as in DINO, Caron et al. 2021).

For a test feature, take the k training features of highest cosine similarity s_j; class c gets
the vote sum_j w_j [y_j = c] with w_j = exp(s_j / T) (weighting="exp", DINO's T = 0.07, the
default) or w_j = max(s_j, 0) (weighting="sim"). Votes are normalised to sum to 1 and used as class
probabilities (for AUC); the prediction is their argmax. The paper follows Caron et al. with k=20.
"""

from __future__ import annotations

import numpy as np

from . import WarningLog
from .search import topk_cosine

WEIGHTINGS = ("exp", "sim")


def knn_proba(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    k: int = 20,
    knn_temperature: float = 0.07,
    weighting: str = "exp",
    device: str = "cpu",
    warnings: WarningLog | None = None,
) -> np.ndarray:
    """Class probabilities of the test rows. Shape: train_x [n, D], train_y [n], test_x [m, D] -> [m, C]."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}")
    n_train = len(train_y)
    if k > n_train:
        if warnings is not None:
            warnings.add(f"kNN: k={k} exceeds the {n_train} training samples; using k={n_train}")
        k = n_train
    sims, idx = topk_cosine(test_x, train_x, k=k, device=device)
    sims = sims.astype(np.float64)
    # exp(s/T) is shifted by the row maximum (a common factor) so it never overflows.
    weights = (
        np.exp((sims - sims[:, :1]) / knn_temperature)
        if weighting == "exp"
        else np.clip(sims, 0.0, None)
    )
    votes = np.zeros((len(test_x), n_classes), dtype=np.float64)
    rows = np.repeat(np.arange(len(test_x)), k)
    np.add.at(votes, (rows, np.asarray(train_y)[idx].ravel()), weights.ravel())
    total = votes.sum(axis=1, keepdims=True)
    # "sim" weights can all be 0 (no neighbour with positive similarity): fall back to plain counts.
    bad = total[:, 0] <= 0
    if bad.any():
        counts = np.zeros((int(bad.sum()), n_classes))
        np.add.at(
            counts,
            (np.repeat(np.arange(int(bad.sum())), k), np.asarray(train_y)[idx[bad]].ravel()),
            1.0,
        )
        votes[bad], total[bad] = counts, k
    return votes / total
