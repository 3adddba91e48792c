"""Patients held out of every training stage, chosen once per run (`holdout.json` in the run dir).

The paper keeps its validation split "unseen during all training phases" (App. F.3) and 10% of
SLICE-3D out (Sec. 4.5). `pretrain` and `adapt` draw a patient-grouped split of the data they
train on, stratified on whether a patient has a malignant lesion; the sampler never draws a
held-out patient, the held-out patients give the per-epoch validation loss, and `embed` marks
each store row `train` or `holdout`, so `probe`/`retrieve` report on patients no training
stage has seen.

File (`holdout.json`)::

    {"patient_ids": [...sorted...], "fraction": 0.1, "seed": 0, "n_patients": 418,
     "stratified_on": "patient has a malignant lesion", "fingerprint": "<16 hex>"}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import read_json, write_json

HOLDOUT = "holdout.json"
STRATIFIED_ON = "patient has a malignant lesion"


@dataclass(frozen=True)
class Holdout:
    """The held-out patients of one run (an empty tuple: the run trained on every patient)."""

    patient_ids: tuple[str, ...]  # sorted
    fraction: float  # asked fraction of patients
    seed: int
    n_patients: int  # patients in the data the split was drawn from
    # "fraction" (drawn at random, stratified) or "official" (the patients of the dataset's
    # official test split: `--holdout official`)
    rule: str = "fraction"

    @property
    def fingerprint(self) -> str:
        """Short sha256 of the ids (and how they were drawn): names a split in every output."""
        d = {"ids": list(self.patient_ids), "fraction": self.fraction, "seed": self.seed}
        if self.rule != "fraction":  # older holdout files keep their fingerprints
            d["rule"] = self.rule
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self._ids

    @cached_property
    def _ids(self) -> frozenset:
        return frozenset(self.patient_ids)

    def to_dict(self) -> dict:
        return {
            "patient_ids": list(self.patient_ids),
            "fraction": self.fraction,
            "seed": self.seed,
            "n_patients": self.n_patients,
            "rule": self.rule,
            "stratified_on": STRATIFIED_ON if self.rule == "fraction" else None,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict, *, where: str = HOLDOUT) -> Holdout:
        try:
            h = cls(
                patient_ids=tuple(sorted(str(p) for p in d["patient_ids"])),
                fraction=float(d["fraction"]),
                seed=int(d["seed"]),
                n_patients=int(d["n_patients"]),
                rule=str(d.get("rule", "fraction")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SlimpError(f"{where}: not a slimp holdout file ({exc})") from None
        if d.get("fingerprint") not in (None, h.fingerprint):
            raise SlimpError(f"{where}: its fingerprint does not match its patient ids (edited?)")
        return h


def choose_holdout(
    patient_ids: Sequence[str], positive: Sequence[bool], *, fraction: float, seed: int
) -> Holdout:
    """Hold out `fraction` of the patients, stratified on `positive` (has a malignant lesion).

    At least one patient stays on each side; fraction 0 holds out nobody. Deterministic for
    (ids, fraction, seed) whatever the order of `patient_ids`.
    """
    if isinstance(fraction, bool) or not 0.0 <= float(fraction) < 1.0:
        raise SlimpError(f"--holdout {fraction}: give a fraction of patients in [0, 1)")
    n = len(patient_ids)
    if fraction == 0 or n == 0:
        return Holdout(patient_ids=(), fraction=float(fraction), seed=int(seed), n_patients=n)
    n_out = int(round(fraction * n))
    if n_out < 1 or n_out > n - 1:
        raise SlimpError(
            f"--holdout {fraction} of {n} patients leaves {n_out} held out; it needs at least "
            "one patient on each side (change --holdout, or 0 to turn it off)"
        )
    order = np.argsort(np.asarray(patient_ids, dtype=object).astype(str), kind="stable")
    ids = np.asarray(patient_ids, dtype=object)[order]
    pos = np.asarray(positive, dtype=bool)[order]
    rng = np.random.default_rng([int(seed), 0x401D])  # own stream: never the training seed's
    chosen: list[int] = []
    # Stratified: each class gives its share (largest remainders settle the rounding).
    classes = [np.flatnonzero(pos == v) for v in (False, True)]
    shares = [len(c) * n_out / n for c in classes]
    take = [int(np.floor(s)) for s in shares]
    for i in np.argsort([-(s - t) for s, t in zip(shares, take)], kind="stable"):
        if sum(take) >= n_out:
            break
        take[i] += 1
    for members, k in zip(classes, take):
        if k:
            chosen += rng.choice(members, size=min(k, len(members)), replace=False).tolist()
    held = tuple(sorted(str(ids[i]) for i in chosen))
    return Holdout(patient_ids=held, fraction=float(fraction), seed=int(seed), n_patients=n)


def official_holdout(
    patient_ids: Sequence[str], official: Sequence[set[str]], *, seed: int, where: str = "DATA"
) -> Holdout:
    """`--holdout official`: hold out every patient with a lesion in the dataset's official
    test split (`official[i]`: the official splits of patient i's lesions, e.g. Derm7pt's
    Kawahara index files), so that pre-training never sees the cases `--split official` scores.
    """
    n = len(patient_ids)
    if not any(official):
        raise SlimpError(
            f"--holdout official: {where} has no official split (ingest Derm7pt with its "
            "meta/*_indexes.csv files, or give --holdout a fraction)"
        )
    held = tuple(sorted(str(p) for p, splits in zip(patient_ids, official) if "test" in splits))
    if not held or len(held) == n:
        raise SlimpError(
            f"--holdout official: {len(held)} of {n} patients are in the official test split; "
            "it needs at least one patient on each side"
        )
    return Holdout(
        patient_ids=held, fraction=len(held) / n, seed=int(seed), n_patients=n, rule="official"
    )


def patient_official_splits(index) -> list[set[str]]:
    """The official splits of each patient's lesions (a ShardIndex; JSON only)."""
    return [
        {
            str(les["official_split"])
            for les in index.patient(i).lesions
            if les.get("official_split")
        }
        for i in range(len(index))
    ]


def patient_positives(index) -> tuple[list[str], list[bool]]:
    """Every patient id of a ShardIndex and whether it has a malignant lesion (JSON only)."""
    ids, positive = [], []
    for i in range(len(index)):
        rec = index.patient(i)
        ids.append(str(rec.patient_id))
        positive.append(any(les.get("malignant") == 1 for les in rec.lesions))
    return ids, positive


def write_holdout(run_dir: str | Path, holdout: Holdout) -> None:
    write_json(Path(run_dir) / HOLDOUT, holdout.to_dict())


def read_holdout(run_dir: str | Path) -> Holdout | None:
    """The run's held-out patients, or None when the run has no holdout.json."""
    path = Path(run_dir) / HOLDOUT
    if not path.is_file():
        return None
    return Holdout.from_dict(read_json(path), where=str(path))
