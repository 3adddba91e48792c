"""Evaluation splits (slimp_cli.eval.splits): stratified, patient-disjoint, low-shot."""

from __future__ import annotations

import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval import WarningLog
from slimp_cli.eval.splits import check_fractions, low_shot, make_split, patient_split, random_split


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


def test_official_split_trains_on_train_and_valid():
    official = np.array(["train", "test", "valid", "test", "train", "valid", "test"])
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    train, test = make_split("official", y, np.arange(7), seed=3, official=official)
    assert train.tolist() == [0, 2, 4, 5] and test.tolist() == [1, 3, 6]
    again = make_split("official", y, np.arange(7), seed=9, official=official)
    assert [a.tolist() for a in again] == [train.tolist(), test.tolist()]  # fixed: seed-free
    with pytest.raises(SlimpError, match="no official split"):
        make_split("official", y, np.arange(7), seed=0)
    with pytest.raises(SlimpError, match="4 train/valid and 0 test rows"):
        make_split("official", y[:4], np.arange(4), seed=0, official=official[[0, 2, 4, 5]])


def test_split_info_chooses_official_only_where_it_exists():
    from slimp_cli.eval.splits import SplitInfo

    lesions = np.array(["a", "b"])
    plain = SplitInfo(sides=None, lesions=lesions, fingerprint=None, where="s.h5")
    with pytest.raises(SlimpError, match="s.h5 has no official split; ingest Derm7pt with"):
        plain.choose("official")
    assert plain.choose(None) == "random"
    stored = SplitInfo(
        sides=None,
        lesions=lesions,
        fingerprint=None,
        official=np.array(["train", "test"]),
        official_from="store",
    )
    assert stored.choose("official") == "official" and stored.choose(None) == "random"
    assert stored.choose("random") == "random"
    filed = SplitInfo(
        sides=None,
        lesions=lesions,
        fingerprint=None,
        official=np.array(["train", "test"]),
        official_from="split.csv",
    )
    assert filed.choose(None) == "official"  # a split file implies --split official
    with pytest.raises(SlimpError, match="use it with --split official"):
        filed.choose("patient")
    assert filed.subset(np.array([1])).official.tolist() == ["test"]
