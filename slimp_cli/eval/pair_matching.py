"""Dermoscopic -> clinical pair matching on an SM3 store (SM3 paper Sec. IV-B, Table III).

Each case's dermoscopic image is the query; the gallery is the clinical images of all cases that
have both; the relevant item is the same case's clinical image. Similarity is the cosine between
the cross-modal embeddings (`derm_mm`, `clinic_mm`: the space the cross-modal loss trains) when
the store has them, else between the branch features (`derm`, `clinic`; the `concat` fusion has
no per-modality cross-modal space). Reported: Acc@1 (the pair is the most similar), Acc@5 (in
the top 5), the average rank of the pair (1 = best; chance: (n + 1) / 2) and n.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import SlimpError
from ..paths import json_safe
from ..store import FeatureStore
from . import WarningLog
from .metrics import rank_metrics
from .retrieval import ranks_of_relevant

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


def run_pair_matching(
    store_path: str | os.PathLike,
    *,
    features: tuple[str, str] | None = None,
    device: str = "auto",
    chunk_size: int = 4096,
) -> dict:
    """`retrieve --pair-matching`: {"pair_matching": {"Acc@1", "Acc@5", "mean_rank", "n"},
    "chance": {...}, "features": [query level, gallery level], "warnings": [...]}."""
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
    both = mask[:, names.index(QUERY)] & mask[:, names.index(GALLERY)]
    rows = np.flatnonzero(both)
    if len(rows) < 2:
        raise SlimpError(
            f"{store_path}: {len(rows)} case(s) have both a dermoscopic and a clinical image; "
            "pair matching needs at least 2"
        )
    if len(rows) < len(both):
        warnings.add(f"{len(both) - len(rows)} of {len(both)} cases lack an image: left out")
    ident = np.arange(len(rows))
    greater, tied = ranks_of_relevant(
        query_all[rows],
        gallery_all[rows],
        query_groups=ident,
        gallery_groups=ident,
        device=device,
        query_chunk=chunk_size,
    )
    n = len(rows)
    return json_safe(
        {
            "pair_matching": pair_matching_metrics(greater, tied),
            "chance": {"Acc@1": 1 / n, "Acc@5": min(5, n) / n, "mean_rank": (n + 1) / 2, "n": n},
            "features": list(features),
            "warnings": list(warnings),
        }
    )
