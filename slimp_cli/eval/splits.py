"""Train / held-out splits (paper Sec. 4.2, App. E.6) and low-shot subsets (Table 2).

- holdout: the run's held-out patients (holdout.json, carried by the store's `split`): unseen
  by every training stage. The headline protocol; the split is fixed, so seeds vary only the
  classifier (and low-shot subsets).
- random: lesion-grouped random split, stratified by label, 90/10 (the paper's standard
  protocol): all images of one lesion land on one side (a store row is an image; PAD has 2,298
  images of 1,641 lesions, so an image-level split would put twins on both sides).
- patient: patient-disjoint, stratified by label as far as groups allow (StratifiedGroupKFold
  with round(1/test_size) folds; the fold closest to test_size of the lesions, preferring folds
  that hold every class, is held out). A patient is never on both sides.
- official: the dataset's own fixed train/valid/test split (Derm7pt: Kawahara et al.'s 413 /
  203 / 395 cases, SM3 Sec. IV-A), carried by the store's `official_split` or given as a CSV
  (`--split-file`: columns id, split; id = the store's lesion_id, else patient_id). The probe
  trains on train + valid and every metric is on the test cases; like holdout, it is fixed, so
  seeds vary only the classifier.
- low_shot: keep a stratified fraction of the training rows, at least one per class.
"""

from __future__ import annotations

import csv
import warnings as _pywarnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ..core.errors import SlimpError
from ..features.store import OFFICIAL_SPLITS
from . import WarningLog

SPLITS = ("holdout", "random", "patient", "official")
# NOTE[DIFF]: SM3 (Sec. IV-A) names a 203-case validation part without saying what it serves
# (presumably model selection, as in Kawahara et al.). The probe has nothing to select on it
# (--cv picks C by inner cross-validation over its own training rows), so it trains on
# train + valid and every number is on the 395 test cases (docs/method.md).
OFFICIAL_TRAIN = ("train", "valid")
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
    unit: str = "patient",
) -> tuple[np.ndarray, np.ndarray]:
    """Group-disjoint split with ~test_size of the rows held out, stratified by label.

    Shape: y [n], groups [n] (patient ids, or lesion ids with unit="lesion") -> (train_idx,
    test_idx) sorted int arrays. No group is ever on both sides.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise SlimpError(
            f"a {unit}-grouped split needs at least 2 {unit}s; the store has {n_groups}"
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
        _warn_missing_classes(y, train, test, seed=seed, warnings=warnings, kind=unit)
    return np.sort(train), np.sort(test)


def _warn_missing_classes(
    y, train, test, *, seed, warnings: WarningLog | None, kind: str = "patient"
) -> None:
    """Name any class a grouped split left out of one side."""
    if warnings is None:
        return
    classes = set(np.unique(y).tolist())
    for side, rows in (("held-out", test), ("training", train)):
        gone = sorted(classes - set(np.unique(y[rows]).tolist()))
        if gone:
            warnings.add(
                f"{kind} split (seed {seed}): class(es) {', '.join(map(str, gone))} absent from the {side} part"
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
    lesions: np.ndarray | None = None,
    sides: np.ndarray | None = None,
    official: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on kind: "holdout" (rows whose `sides` is "holdout" are the test part),
    "random" (grouped by `lesions` when given: twins stay together), "patient" (`groups`) or
    "official" (`official` per row: train + valid rows train, test rows test)."""
    if not 0.0 < test_size < 1.0:
        raise SlimpError(f"held-out fraction {test_size} must be in (0, 1)")
    if kind == "official":
        if official is None:
            raise SlimpError(
                "--split official: no official split (a store of Derm7pt ingested with its index "
                "files, or --split-file CSV)"
            )
        official = np.asarray(official)
        train = np.flatnonzero(np.isin(official, OFFICIAL_TRAIN))
        test = np.flatnonzero(official == "test")
        if len(test) == 0 or len(train) == 0:
            raise SlimpError(
                f"--split official: {len(train)} train/valid and {len(test)} test rows among the "
                "labelled ones; both parts need rows"
            )
        _warn_missing_classes(y, train, test, seed=seed, warnings=warnings, kind="official")
        return train, test
    if kind == "holdout":
        if sides is None:
            raise SlimpError(
                "--split holdout: this store has no held-out patients (it was not embedded from "
                "the data its run trained on, or with an older slimp); use --split patient"
            )
        sides = np.asarray(sides)
        train, test = np.flatnonzero(sides == "train"), np.flatnonzero(sides == "holdout")
        if len(test) == 0 or len(train) == 0:
            raise SlimpError(
                f"--split holdout: the store has {len(train)} training and {len(test)} held-out "
                "rows among the labelled ones (was the run trained with --holdout 0?); use "
                "--split patient"
            )
        _warn_missing_classes(y, train, test, seed=seed, warnings=warnings, kind="holdout")
        return train, test
    if kind == "random":
        if lesions is not None and len(np.unique(lesions)) < len(lesions):
            return patient_split(
                y, lesions, seed=seed, test_size=test_size, warnings=warnings, unit="lesion"
            )
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


def read_split_file(
    path: str | Path,
    *,
    lesion_ids: np.ndarray,
    patient_ids: np.ndarray,
    warnings: WarningLog | None = None,
) -> tuple[np.ndarray, str]:
    """Each store row's split from a CSV with columns `id` and `split` (train, valid or test).

    An id names a lesion (matched against `lesion_ids`) or, when no id is a lesion id, a
    patient (`patient_ids`); every row of the store must get a split. Ids the store lacks are
    ignored (warned). Shape: lesion_ids, patient_ids [N] -> (splits [N] object, the column
    matched: "lesion_id" or "patient_id"). SlimpError (one line) for an unreadable file,
    missing columns, a bad split value, an id given two splits, ids matching nothing, or a
    file covering part of the store (saying how many)."""
    path = Path(path)
    where = f"--split-file {path}"
    if not path.is_file():
        raise SlimpError(f"{where}: no such file")
    mapping: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
            if "id" not in columns or "split" not in columns:
                raise SlimpError(
                    f"{where}: needs the columns id and split (it has: "
                    f"{', '.join(c for c in columns if c) or 'none'})"
                )
            for record in reader:
                key = (record.get(columns["id"]) or "").strip()
                value = (record.get(columns["split"]) or "").strip().lower()
                if not key and not value:
                    continue  # a blank line
                if value not in OFFICIAL_SPLITS:
                    raise SlimpError(
                        f"{where}: line {reader.line_num}: split '{value}' is not one of "
                        f"{', '.join(OFFICIAL_SPLITS)}"
                    )
                if mapping.get(key, value) != value:
                    raise SlimpError(
                        f"{where}: line {reader.line_num}: id '{key}' is listed as both "
                        f"{mapping[key]} and {value}"
                    )
                mapping[key] = value
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SlimpError(f"{where}: not a readable UTF-8 CSV ({exc})") from None
    except OSError as exc:  # a folder, no permission...
        raise SlimpError(f"{where}: cannot read it ({exc.strerror})") from None
    if not mapping:
        raise SlimpError(f"{where}: lists no id")
    known = np.asarray(list(mapping), dtype=object)
    matched = None
    for column, values in (("lesion_id", lesion_ids), ("patient_id", patient_ids)):
        values = np.asarray(values).astype(str)
        hit = np.isin(values, known)
        if hit.any():
            matched = column, values, hit
            break
    if matched is None:
        raise SlimpError(
            f"{where}: none of its {len(mapping)} ids (e.g. '{known[0]}') is a lesion_id or "
            f"patient_id of the store (e.g. '{lesion_ids[0] if len(lesion_ids) else ''}')"
        )
    column, ids, hit = matched
    if not hit.all():
        lacking = np.unique(ids[~hit])
        raise SlimpError(
            f"{where}: its ids cover {int(hit.sum())} of the store's {len(ids)} rows; "
            f"{len(lacking)} {column}s have no split (e.g. '{lacking[0]}'); give every one a "
            "split"
        )
    unused = len(set(mapping) - set(ids.tolist()))
    if unused and warnings is not None:
        warnings.add(f"--split-file: {unused} of its {len(mapping)} ids are not in the store")
    return np.array([mapping[i] for i in ids], dtype=object), column


@dataclass
class SplitInfo:
    """What a store says about its rows' place in training, for the rows being evaluated."""

    sides: np.ndarray | None  # per row "train"/"holdout" (the run's held-out patients) or None
    lesions: np.ndarray  # per row lesion id (random splits keep a lesion's images together)
    fingerprint: str | None  # of the run's holdout.json
    seen: int = 0  # most test rows seen in pre-training over the seeds evaluated
    official: np.ndarray | None = None  # per row "train"/"valid"/"test" (the fixed split)
    official_from: str | None = None  # "store" (its official_split) or the --split-file path
    where: str = "the store"  # the store's path, for messages

    @classmethod
    def of(
        cls,
        store,
        rows: np.ndarray,
        *,
        split_file: str | Path | None = None,
        warnings: WarningLog | None = None,
    ) -> SplitInfo:
        """The rows' information; `split_file` (a CSV of id, split) replaces the store's own
        official split and is checked against every row of the store."""
        sides = store.split
        official, official_from = store.official_split, "store"
        if split_file is not None:
            official, _ = read_split_file(
                split_file,
                lesion_ids=store.lesion_id,
                patient_ids=store.patient_id,
                warnings=warnings,
            )
            official_from = str(split_file)
        return cls(
            sides=None if sides is None else sides[rows],
            lesions=store.lesion_id[rows],
            fingerprint=store.split_fingerprint,
            official=None if official is None else official[rows],
            official_from=None if official is None else official_from,
            where=str(store.path),
        )

    def subset(self, rows: np.ndarray) -> SplitInfo:
        """The same information for a subset of the rows (e.g. those annotated)."""
        sides = None if self.sides is None else self.sides[rows]
        official = None if self.official is None else self.official[rows]
        return SplitInfo(
            sides=sides,
            lesions=self.lesions[rows],
            fingerprint=self.fingerprint,
            official=official,
            official_from=self.official_from,
            where=self.where,
        )

    @property
    def from_file(self) -> bool:
        """Whether the fixed split comes from a --split-file."""
        return self.official_from not in (None, "store")

    @property
    def has_holdout(self) -> bool:
        return self.sides is not None and bool(
            np.any(self.sides == "holdout") and np.any(self.sides == "train")
        )

    def choose(
        self,
        split: str | None,
        *,
        otherwise: str = "random",
        extra: tuple[str, ...] = (),
        prefer_holdout: bool = True,
    ) -> str:
        """The split to use: the given one (one of SPLITS or `extra`); without one, "official"
        when a --split-file was given, holdout when the store has one (and `prefer_holdout`),
        else `otherwise`. A --split-file goes with --split official only."""
        if split is None:
            if self.from_file:
                return "official"
            return "holdout" if prefer_holdout and self.has_holdout else otherwise
        if split not in SPLITS + tuple(extra):
            raise SlimpError(f"--split {split!r}: choose one of {', '.join(SPLITS + extra)}")
        if self.from_file and split != "official":
            raise SlimpError(
                f"--split-file gives a fixed train/valid/test split: use it with --split "
                f"official (or without --split), not --split {split}"
            )
        if split == "official" and self.official is None:
            raise SlimpError(
                f"--split official: {self.where} has no official split; ingest Derm7pt with its "
                "index files (meta/train_indexes.csv, valid_indexes.csv, test_indexes.csv) and "
                "embed again, or give --split-file CSV (columns id, split)"
            )
        return split

    def split(
        self,
        kind: str,
        y: np.ndarray,
        groups: np.ndarray,
        *,
        seed: int,
        test_size: float = 0.1,
        warnings: WarningLog | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`make_split` of these rows (their lesions, sides and official split); the test rows
        pre-training saw are counted and warned about (`note_seen`)."""
        train, test = make_split(
            kind,
            y,
            groups,
            seed=seed,
            test_size=test_size,
            warnings=warnings,
            lesions=self.lesions,
            sides=self.sides,
            official=self.official,
        )
        self.note_seen(kind, test, warnings)
        return train, test

    def note_seen(self, split: str, test: np.ndarray, warnings: WarningLog | None) -> int:
        """Count the test rows pre-training saw; warn (one line) when there are any."""
        if split == "holdout" or self.sides is None:
            return 0
        what = "evaluated rows" if split == "all" else "test rows"
        n = int(np.sum(self.sides[test] == "train"))
        self.seen = max(self.seen, n)
        if n and warnings is not None:
            warnings.add(
                f"--split {split}: {what} were seen in pre-training (up to {self.seen} of "
                f"{len(test)}); for numbers on unseen patients use --split holdout"
            )
        return n

    def describe(self, split: str) -> dict:
        """The JSON's "split" block (with `official_from`, "store" or the CSV, for official)."""
        block = {
            "kind": split,
            "grouped_by": {
                "holdout": "patients held out of every training stage",
                "random": "lesion (all images of a lesion on one side)",
                "patient": "patient",
                "official": "the dataset's fixed split: trained on train + valid, tested on test",
            }[split],
            "holdout_fingerprint": self.fingerprint,
            "test_rows_seen_in_pretraining": self.seen,
            "seeds_vary": "the classifier only (the split is fixed)"
            if split in ("holdout", "official")
            else "the split and the classifier",
        }
        if split == "official":
            block["official_from"] = self.official_from
        return block
