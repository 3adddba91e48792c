"""Train / held-out splits (paper Sec. 4.2, App. E.6) and low-shot subsets (Table 2).

- random: lesion-level, stratified by label, 90/10 (the paper's standard protocol).
- patient: patient-disjoint, stratified by label as far as groups allow (StratifiedGroupKFold
  with round(1/test_size) folds; the fold closest to test_size of the lesions, preferring folds
  that hold every class, is held out). A patient is never on both sides.
- low_shot: keep a stratified fraction of the training rows, at least one per class.
"""

from __future__ import annotations

import warnings as _pywarnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ..errors import SlimpError
from . import WarningLog

SPLITS = ("random", "patient")
# StratifiedGroupKFold loops over groups in Python (~40 s for 100k groups); above this many
# patients, whole patients are drawn at random instead (stratified by each patient's majority
# class), and the lesion fraction lands near test_size by the law of large numbers.
MANY_GROUPS = 20_000


def random_split(
    y: np.ndarray, *, seed: int, test_size: float = 0.1, warnings: WarningLog | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified lesion-level split. Shape: y [n] -> (train_idx, test_idx) sorted int arrays.

    Classes with a single lesion cannot be stratified: they go to the training side (warned).
    """
    y = np.asarray(y)
    idx = np.arange(len(y))
    values, counts = np.unique(y, return_counts=True)
    rare = values[counts < 2]
    keep = ~np.isin(y, rare)
    if len(rare) and warnings is not None:
        warnings.add(
            f"class(es) {', '.join(map(str, rare))} have a single sample: kept in the training split only"
        )
    try:
        train, test = train_test_split(
            idx[keep], test_size=test_size, random_state=seed, stratify=y[keep]
        )
    except ValueError:
        # Too few rows for one test sample per class: fall back to an unstratified split.
        if warnings is not None:
            warnings.add(
                f"too few samples ({keep.sum()}) to stratify a {test_size:.0%} split by class; split is unstratified"
            )
        train, test = train_test_split(idx[keep], test_size=test_size, random_state=seed)
    train = np.concatenate([train, idx[~keep]])
    return np.sort(train), np.sort(test)


def patient_split(
    y: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int,
    test_size: float = 0.1,
    warnings: WarningLog | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Patient-disjoint split with ~test_size of the lesions held out, stratified by label.

    Shape: y [n], groups [n] (patient ids) -> (train_idx, test_idx) sorted int arrays.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise SlimpError(
            "--split patient needs at least 2 patients; the store has 1 (use --split random)"
        )
    if n_groups > MANY_GROUPS:
        return _many_groups_split(y, groups, seed=seed, test_size=test_size, warnings=warnings)
    n_splits = max(2, min(int(round(1.0 / test_size)), n_groups))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    all_classes = set(np.unique(y).tolist())
    best, best_key = None, None
    with _pywarnings.catch_warnings():
        # sklearn warns when the least populated class has fewer members than n_splits; the
        # fold choice below handles that (and we warn ourselves if a class ends up missing).
        _pywarnings.simplefilter("ignore", UserWarning)
        folds = list(cv.split(np.zeros(len(y)), y, groups))
    for train, test in folds:
        missing = len(all_classes - set(np.unique(y[test]).tolist())) + len(
            all_classes - set(np.unique(y[train]).tolist())
        )
        key = (missing, abs(len(test) / len(y) - test_size))
        if best_key is None or key < best_key:
            best, best_key = (train, test), key
    train, test = best
    if best_key[0]:
        _warn_missing_classes(y, train, test, seed=seed, warnings=warnings)
    return np.sort(train), np.sort(test)


def _warn_missing_classes(y, train, test, *, seed, warnings: WarningLog | None) -> None:
    """Name any class a patient split left out of one side."""
    if warnings is None:
        return
    classes = set(np.unique(y).tolist())
    for side, rows in (("held-out", test), ("training", train)):
        gone = sorted(classes - set(np.unique(y[rows]).tolist()))
        if gone:
            warnings.add(
                f"patient split (seed {seed}): class(es) {', '.join(map(str, gone))} absent from the {side} part"
            )


def _many_groups_split(y, groups, *, seed, test_size, warnings) -> tuple[np.ndarray, np.ndarray]:
    uniq, code = np.unique(groups, return_inverse=True)
    # majority class of each patient (ties -> smallest class index)
    classes, y_code = np.unique(y, return_inverse=True)
    counts = np.zeros((len(uniq), len(classes)), dtype=np.int64)
    np.add.at(counts, (code, y_code), 1)
    strata = counts.argmax(1)
    ok = np.bincount(strata)[strata] >= 2
    try:
        _, test_groups = train_test_split(
            np.flatnonzero(ok), test_size=test_size, random_state=seed, stratify=strata[ok]
        )
    except ValueError:
        _, test_groups = train_test_split(
            np.flatnonzero(ok), test_size=test_size, random_state=seed
        )
    is_test = np.zeros(len(uniq), dtype=bool)
    is_test[test_groups] = True
    test = np.flatnonzero(is_test[code])
    train = np.flatnonzero(~is_test[code])
    _warn_missing_classes(y, train, test, seed=seed, warnings=warnings)
    return train, test


def make_split(
    kind: str,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int,
    test_size: float = 0.1,
    warnings: WarningLog | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on kind ("random" | "patient")."""
    if not 0.0 < test_size < 1.0:
        raise SlimpError(f"held-out fraction {test_size} must be in (0, 1)")
    if kind == "random":
        return random_split(y, seed=seed, test_size=test_size, warnings=warnings)
    if kind == "patient":
        return patient_split(y, groups, seed=seed, test_size=test_size, warnings=warnings)
    raise SlimpError(f"--split {kind!r}: choose one of {', '.join(SPLITS)}")


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """Validate --low-shot fractions: each in (0, 1]."""
    out = []
    for f in fractions:
        if not (isinstance(f, (int, float)) and 0.0 < float(f) <= 1.0):
            raise SlimpError(f"--low-shot: fraction {f} is not in (0, 1]")
        out.append(float(f))
    return out


def low_shot(train_idx: np.ndarray, y: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Stratified subset of the training rows: per class max(1, round(fraction * n_c)) rows.

    Shape: train_idx [m] indices into y -> sorted subset of train_idx.
    """
    check_fractions([fraction])
    rng = np.random.default_rng(seed)
    keep = []
    y_train = np.asarray(y)[train_idx]
    for c in np.unique(y_train):
        rows = train_idx[y_train == c]
        n_keep = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=min(n_keep, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))
