"""Classification metrics, rank metrics, aggregation and splits: known answers and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from slimp_cli.eval import WarningLog
from slimp_cli.eval.metrics import classification_metrics, percentiles, rank_metrics, summarize


def test_binary_hand_computed():
    # confusion [[TN=3, FP=1], [FN=1, TP=1]]: sensitivity 1/2, specificity 3/4
    y = np.array([0, 0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 0.4])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), task="binary")
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert m["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # 2TP / (2TP + FP + FN)
    # AUC by hand: positives 0.9, 0.4 vs negatives 0.1, 0.2, 0.3, 0.6 -> 4 + 3 wins of 8 pairs
    assert m["auc"] == pytest.approx(7 / 8)


def test_binary_equals_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), task="binary")
    pred = (p1 > 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))


def test_multiclass_equals_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2 * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba, task="multiclass")
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert (
        m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro")) == pytest.approx(m["f1"])
    )
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))


def test_multiclass_absent_class_warns():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)  # class 3 never in the test split
    proba = rng.dirichlet(np.ones(4), 60)
    log = WarningLog()
    m = classification_metrics(
        y, proba, task="multiclass", class_names=["a", "b", "c", "d"], warnings=log
    )
    expected = np.mean([roc_auc_score(y == c, proba[:, c]) for c in range(3)])
    assert m["auc"] == pytest.approx(expected)
    assert any("d absent from the test split" in w for w in log)


def test_single_class_auc_nan():
    log = WarningLog()
    m = classification_metrics(
        np.ones(5, int), np.tile([0.2, 0.8], (5, 1)), task="binary", warnings=log
    )
    assert math.isnan(m["auc"]) and m["accuracy"] == 1.0 and log


def test_summarize():
    s = summarize([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": math.nan}, {"a": 2.0, "b": math.nan}])
    assert s["a"]["mean"] == pytest.approx(2.0) and s["a"]["std"] == pytest.approx(
        np.std([1, 3, 2])
    )
    assert s["b"] == {"mean": None, "std": None}


def test_rank_metrics_hand():
    m = rank_metrics(np.array([1, 2, 6]) - 1, ks=(1, 5))  # ranks 1, 2, 6: no ties
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == pytest.approx(2 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert m["mAP"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 3)


def test_percentiles():
    v = np.arange(101, dtype=float)
    p = percentiles(v)
    assert (
        p["2"] == 2.0
        and p["50"] == 50.0
        and p["98"] == 98.0
        and list(p) == ["2", "10", "25", "50", "75", "90", "98"]
    )


# --- splits --------------------------------------------------------------------------------------
