"""Cosine kNN (slimp_cli.eval.knn) against a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest

from slimp_cli.eval import WarningLog
from slimp_cli.eval.knn import knn_proba


def brute_knn(train_x, train_y, test_x, *, k, n_classes, temperature=0.07, weighting="exp"):
    """Reference: loop over queries, sort similarities, weighted votes."""
    tn = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    out = []
    for q in test_x:
        q = q / np.linalg.norm(q)
        sims = tn @ q
        order = np.argsort(-sims)[:k]
        votes = np.zeros(n_classes)
        for j in order:
            votes[train_y[j]] += (
                np.exp(sims[j] / temperature) if weighting == "exp" else max(sims[j], 0)
            )
        out.append(votes / votes.sum())
    return np.array(out)


@pytest.mark.parametrize("weighting", ["exp", "sim"])
def test_knn_equals_brute_force(weighting):
    rng = np.random.default_rng(0)
    tx, ty, qx = rng.normal(size=(300, 6)), rng.integers(0, 3, 300), rng.normal(size=(50, 6))
    got = knn_proba(tx, ty, qx, n_classes=3, k=7, weighting=weighting, device="cpu")
    np.testing.assert_allclose(
        got, brute_knn(tx, ty, qx, k=7, n_classes=3, weighting=weighting), rtol=1e-4, atol=1e-6
    )


def test_knn_k_larger_than_train_warns():
    rng = np.random.default_rng(0)
    log = WarningLog()
    got = knn_proba(
        rng.normal(size=(5, 3)),
        np.array([0, 1, 0, 1, 1]),
        rng.normal(size=(4, 3)),
        n_classes=2,
        k=20,
        device="cpu",
        warnings=log,
    )
    assert got.shape == (4, 2) and any("using k=5" in w for w in log)
