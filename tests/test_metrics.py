"""Classification metrics, rank metrics, aggregation and splits: known answers and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from slimp_cli.errors import SlimpError
from slimp_cli.eval import WarningLog
from slimp_cli.eval.metrics import classification_metrics, percentiles, rank_metrics, summarize
from slimp_cli.eval.splits import check_fractions, low_shot, make_split, patient_split, random_split


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
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro")) == pytest.approx(m["f1"])
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))


def test_multiclass_absent_class_warns():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)  # class 3 never in the test split
    proba = rng.dirichlet(np.ones(4), 60)
    log = WarningLog()
    m = classification_metrics(y, proba, task="multiclass", class_names=["a", "b", "c", "d"], warnings=log)
    expected = np.mean([roc_auc_score(y == c, proba[:, c]) for c in range(3)])
    assert m["auc"] == pytest.approx(expected)
    assert any("d absent from the test split" in w for w in log)


def test_single_class_auc_nan():
    log = WarningLog()
    m = classification_metrics(np.ones(5, int), np.tile([0.2, 0.8], (5, 1)), task="binary", warnings=log)
    assert math.isnan(m["auc"]) and m["accuracy"] == 1.0 and log


def test_summarize():
    s = summarize([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": math.nan}, {"a": 2.0, "b": math.nan}])
    assert s["a"]["mean"] == pytest.approx(2.0) and s["a"]["std"] == pytest.approx(np.std([1, 3, 2]))
    assert s["b"] == {"mean": None, "std": None}


def test_rank_metrics_hand():
    m = rank_metrics(np.array([1, 2, 6]), ks=(1, 5))
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == pytest.approx(2 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert m["mAP"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 3)


def test_percentiles():
    v = np.arange(101, dtype=float)
    p = percentiles(v)
    assert p["2"] == 2.0 and p["50"] == 50.0 and p["98"] == 98.0 and list(p) == ["2", "10", "25", "50", "75", "90", "98"]


# --- splits --------------------------------------------------------------------------------------
def test_random_split_stratified():
    y = np.repeat([0, 1, 2], [500, 300, 200])
    train, test = random_split(y, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1000
    assert len(test) == 100
    assert np.bincount(y[test]).tolist() == [50, 30, 20]


def test_random_split_singleton_class_in_train():
    y = np.array([0] * 30 + [1] * 30 + [2])
    log = WarningLog()
    train, test = random_split(y, seed=0, warnings=log)
    assert 60 in train and log


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_patient_split_disjoint(seed):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(150), rng.integers(1, 12, 150))
    y = (rng.random(len(groups)) < 0.3).astype(int)
    train, test = patient_split(y, groups, seed=seed)
    assert len(train) + len(test) == len(y)
    assert not set(groups[train]) & set(groups[test])  # never a patient on both sides
    assert 0.06 <= len(test) / len(y) <= 0.14
    assert set(y[test]) == {0, 1}
    t2, _ = patient_split(y, groups, seed=seed)
    np.testing.assert_array_equal(train, t2)  # deterministic


def test_patient_split_errors():
    with pytest.raises(SlimpError, match="at least 2 patients"):
        make_split("patient", np.array([0, 1, 0]), np.array(["p", "p", "p"]), seed=0)
    with pytest.raises(SlimpError, match="--split"):
        make_split("bogus", np.array([0, 1]), np.array([0, 1]), seed=0)


def test_low_shot():
    y = np.repeat([0, 1, 2], [900, 90, 10])
    train = np.arange(1000)
    sub = low_shot(train, y, fraction=0.01, seed=0)
    assert np.bincount(y[sub]).tolist() == [9, 1, 1]  # at least one per class
    sub = low_shot(train, y, fraction=0.1, seed=0)
    assert np.bincount(y[sub]).tolist() == [90, 9, 1]
    assert len(set(sub)) == len(sub)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(SlimpError, match="--low-shot"):
            check_fractions([bad])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_many_patients_path(monkeypatch, seed):
    import slimp_cli.eval.splits as splits

    monkeypatch.setattr(splits, "MANY_GROUPS", 100)  # force the fast path for many patients
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 2000, 6000)
    y = (rng.random(6000) < 0.2).astype(int)
    train, test = splits.patient_split(y, groups, seed=seed)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == 6000 and 0.08 <= len(test) / 6000 <= 0.12
    assert abs(y[test].mean() - y.mean()) < 0.05


@pytest.mark.parametrize("many_groups", [10_000, 5])
def test_patient_split_names_a_class_it_left_out(monkeypatch, many_groups):
    """Both patient-split paths warn when a class sits in one patient only."""
    import slimp_cli.eval.splits as splits

    monkeypatch.setattr(splits, "MANY_GROUPS", many_groups)
    y = np.zeros(60, dtype=int)
    y[:3] = 1  # class 1: all three lesions of patient 0
    groups = np.arange(60) // 3
    log = WarningLog()
    train, test = splits.patient_split(y, groups, seed=0, warnings=log)
    side = "held-out" if 0 in train else "training"
    assert any(f"class(es) 1 absent from the {side} part" in w for w in log), list(log)
