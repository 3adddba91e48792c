"""Dermoscopic -> clinical pair matching on an SM3 store (SM3 paper Sec. IV-B, Table III).

Each case's dermoscopic image is the query; the gallery is the clinical images of all cases that
have both; the relevant items are the clinical images of the same lesion (lesion id: the case
itself in Derm7pt, where `case_num` is the lesion id; a second case of one lesion is a match,
not a non-relevant tie), and the rank is that of the best one. Similarity is the cosine between
the cross-modal embeddings (`derm_mm`, `clinic_mm`: the space the cross-modal loss trains) when
the store has them, else between the branch features (`derm`, `clinic`; the `concat` fusion has
no per-modality cross-modal space). Reported: Acc@1 (the pair is the most similar), Acc@5 (in
the top 5), the average rank of the pair (1 = best; chance: (n + 1) / 2 with one relevant
item) and n; ties count half (eval/metrics.rank_metrics).

Only the evaluated cases are queries and gallery: every case by default, the test cases of a
split when one is given (`--split official`: Derm7pt's 395 test cases). NOTE[DIFF]: SM3's
Table III ranks among 413 cases ("Avg Rank (total 413)", the size of the training part); with
`--split official` slimp ranks the unseen test cases (a --split-file that marks the training
cases "test" ranks those instead; docs/method.md).
"""

from __future__ import annotations

import os

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import json_safe
from ..features.store import FeatureStore
from . import WarningLog
from .metrics import rank_metrics
from .retrieval import lesion_codes, ranks_of_relevant
from .splits import SplitInfo

QUERY, GALLERY = "dermoscopic", "clinical"


def pair_matching_metrics(greater: np.ndarray, tied: np.ndarray | None = None) -> dict:
    """Acc@1, Acc@5, mean rank and n of the true pairs, ties broken at random (expected
    values, as `metrics.rank_metrics`: a tie counts half in the rank)."""
    m = rank_metrics(greater, tied, ks=(1, 5))
    return {
        "Acc@1": m["R@1"],
        "Acc@5": m["R@5"],
        "mean_rank": m["mean_rank"],
        "n": int(len(greater)),
    }


def chance_metrics(m: np.ndarray, n: int) -> dict:
    """Acc@1, Acc@5 and mean rank of a random ranking, averaged over the queries.

    A query with m relevant items among n: the non-relevant items ranked above the best relevant
    one number (n - m) / (m + 1) on average, so the mean rank is (n + 1) / (m + 1); no relevant
    item in the top k has probability C(n - m, k) / C(n, k) = prod_{i<k} (n - m - i) / (n - i).
    Shape: m [Nq] ints in 1..n.
    """
    m = np.asarray(m, dtype=np.float64)
    out = {"n": int(n), "mean_rank": float(np.mean((n + 1) / (m + 1)))}
    for k in (1, 5):
        miss = np.ones_like(m)
        for i in range(min(k, n)):
            miss *= np.clip(n - m - i, 0, None) / (n - i)
        out[f"Acc@{k}"] = float(np.mean(1.0 - miss))
    return {key: out[key] for key in ("Acc@1", "Acc@5", "mean_rank", "n")}


def run_pair_matching(
    store_path: str | os.PathLike,
    *,
    features: tuple[str, str] | None = None,
    device: str = "auto",
    chunk_size: int = 4096,
    split: str | None = None,
    split_file: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict:
    """`retrieve --pair-matching`: {"pair_matching": {"Acc@1", "Acc@5", "mean_rank", "n"},
    "chance": {...}, "features": [query level, gallery level], "split": {...}, "warnings":
    [...]}. `split` None or "all": every case; otherwise (or with `split_file`) the test part of
    that split (eval/splits.py), and ranks are within it."""
    warnings = WarningLog()
    with FeatureStore.open(store_path) as store:
        present = store.modalities
        if present is None:
            raise SlimpError(
                f"{store_path}: not an SM3 store (no per-case modalities); pair matching needs "
                "`slimp embed` of a `pretrain --method sm3` run"
            )
        mask, names = present
        if features is None:
            features = (
                ("derm_mm", "clinic_mm")
                if {"derm_mm", "clinic_mm"} <= set(store.feature_names)
                else ("derm", "clinic")
            )
            if features == ("derm", "clinic"):
                warnings.add(
                    "no cross-modal embeddings (concat fusion): matching the branch features, "
                    "which live in two unrelated spaces"
                )
        query_all, gallery_all = store.block(features[0]), store.block(features[1])
        lesion_ids = store.lesion_id
        split_info = SplitInfo.of(
            store, np.arange(store.n), split_file=split_file, warnings=warnings
        )
        label, patients = store.label, store.patient_id
    split = split_info.choose(split, otherwise="all", extra=("all",), prefer_holdout=False)
    evaluated = np.ones(len(mask), dtype=bool)
    if split != "all":  # rank within the evaluated cases only, not over every case
        _, test = split_info.split(
            split, label, np.unique(patients, return_inverse=True)[1], seed=seed, warnings=warnings
        )
        evaluated = np.isin(np.arange(len(mask)), test)
    both = mask[:, names.index(QUERY)] & mask[:, names.index(GALLERY)] & evaluated
    rows = np.flatnonzero(both)
    if len(rows) < 2:
        raise SlimpError(
            f"{store_path}: {len(rows)} case(s) have both a dermoscopic and a clinical image; "
            "pair matching needs at least 2"
        )
    if len(rows) < evaluated.sum():
        warnings.add(
            f"{evaluated.sum() - len(rows)} of {evaluated.sum()} cases lack an image: left out"
        )
    lesion = lesion_codes(lesion_ids[rows])
    greater, tied = ranks_of_relevant(
        query_all[rows],
        gallery_all[rows],
        query_groups=lesion,
        gallery_groups=lesion,
        device=device,
        query_chunk=chunk_size,
    )
    n = len(rows)
    return json_safe(
        {
            "pair_matching": pair_matching_metrics(greater, tied),
            "chance": chance_metrics(np.bincount(lesion)[lesion], n),
            "features": list(features),
            "split": {"kind": "all", "grouped_by": "every case"}
            if split == "all"
            else split_info.describe(split),
            "warnings": list(warnings),
        }
    )
