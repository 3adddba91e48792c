"""Image <-> metadata retrieval on a feature store (paper Sec. 4.5, Tables 4, 5, 20, 21, Fig. 3).

Tasks (instance-level: the relevant item of a query is its own counterpart):
- image_to_lesion / lesion_to_image: queries and gallery are the N lesions; one relevant item.
- image_to_patient: gallery = the P unique patients' metadata vectors; the relevant item of
  lesion i is its patient's vector. patient_to_image: queries = the P patients, gallery = the N
  images; a patient's images are all relevant and the rank is that of the best-ranked one
  (first-relevant convention: R@k = a relevant image in the top k, NDCG@k = 1/log2(rank+1),
  "mAP" = mean 1/rank).
- phenotype_to_patient (nested stores with the phenotype layer): queries = each patient's
  phenotype z_p = Linear(mean of concat(w, h) over its evaluated lesions), gallery = the unique
  patient vectors: the retrieval the outer loss trains.
rank = 1 + number of non-relevant gallery items strictly more similar (ties count in the
query's favour; they have probability zero for continuous embeddings).
Counting is chunked (eval/search.py), so no N x N matrix is ever built.

Similarity percentiles: "matching" = cos(image_i, lesion_i) over the evaluated lesions;
"non_matching" = cos(image_i, lesion_j) over `n_negative` random pairs i != j (seeded);
with a split, "retrieved" = cos of each held-out image with its most similar lesion metadata
from the training part (Fig. 3's "retrieved from the training set").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SlimpError, check_seed
from ..paths import json_safe
from ..store import FeatureStore
from . import WarningLog
from .metrics import RETRIEVAL_KS, percentiles, rank_metrics
from .search import GALLERY_CHUNK, count_greater, normalize, topk_cosine
from .splits import make_split

N_NEGATIVE = 100_000


def ranks_of_relevant(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    device: str = "cpu",
    query_chunk: int = 4096,
    gallery_chunk: int = GALLERY_CHUNK,
) -> np.ndarray:
    """1-based rank of the best relevant gallery item of each query.

    Gallery item j is relevant to query i when gallery_groups[j] == query_groups[i]. Either the
    gallery groups are distinct (one relevant item per query) or the query groups are (a query
    may have several relevant items); every query needs at least one.
    Shape: queries [Nq, D], gallery [Ng, D], query_groups [Nq], gallery_groups [Ng]
    (non-negative ints) -> ranks [Nq] int64.
    """
    qn, gn = normalize(queries), normalize(gallery)
    qg = np.asarray(query_groups, dtype=np.int64)
    gg = np.asarray(gallery_groups, dtype=np.int64)
    best = _best_relevant(qn, gn, qg, gg)
    counts = count_greater(
        qn,
        gn,
        best,
        query_groups=qg,
        gallery_groups=gg,
        device=device,
        query_chunk=query_chunk,
        gallery_chunk=gallery_chunk,
    )
    return counts + 1


def _best_relevant(qn: np.ndarray, gn: np.ndarray, qg: np.ndarray, gg: np.ndarray) -> np.ndarray:
    """Highest cosine between each query and its relevant items. Shape: -> [Nq] float32."""
    n_groups = int(max(qg.max(initial=-1), gg.max(initial=-1))) + 1
    if len(np.unique(gg)) == len(gg):
        where = np.full(n_groups, -1)
        where[gg] = np.arange(len(gg))
        item = where[qg]
        if (item < 0).any():
            raise ValueError("every query needs at least one relevant gallery item")
        return np.einsum("ij,ij->i", qn, gn[item])
    if len(np.unique(qg)) != len(qg):
        raise ValueError("either the query groups or the gallery groups must be distinct")
    owner = np.full(n_groups, -1)
    owner[qg] = np.arange(len(qg))
    q_of_item = owner[gg]
    rel = np.flatnonzero(q_of_item >= 0)
    sims = np.einsum("ij,ij->i", qn[q_of_item[rel]], gn[rel])
    best = np.full(len(qg), -np.inf, dtype=np.float32)
    np.maximum.at(best, q_of_item[rel], sims)
    if np.isinf(best).any():
        raise ValueError("every query needs at least one relevant gallery item")
    return best


def patient_phenotypes(
    image: np.ndarray,
    lesion: np.ndarray,
    patient_of_row: np.ndarray,
    n_patients: int,
    weight: np.ndarray,
    bias: np.ndarray,
) -> np.ndarray:
    """z_p = weight @ mean over the patient's lesions of concat(w, h) + bias (the outer loss's query).

    Shape: image, lesion [N, D], patient_of_row [N] in 0..P-1, weight [D, 2D], bias [D] -> [P, D].
    """
    import torch  # index_add_: a fast grouped sum without copying the [N, D] blocks

    idx = torch.from_numpy(np.asarray(patient_of_row, dtype=np.int64))
    count = torch.bincount(idx, minlength=n_patients).to(torch.float32)[:, None]
    means = [
        torch.zeros(n_patients, x.shape[1]).index_add_(
            0, idx, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        )
        / count
        for x in (image, lesion)
    ]
    return (torch.cat(means, 1).numpy() @ weight.T + bias).astype(np.float32)


def similarity_samples(
    image: np.ndarray, lesion: np.ndarray, *, n_negative: int = N_NEGATIVE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(matching [N] = cos(image_i, lesion_i), non_matching [n_negative] = cos over random i != j)."""
    a, b = normalize(image), normalize(lesion)
    matching = np.einsum("ij,ij->i", a, b)
    n = len(a)
    if n < 2:
        return matching, np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_negative)
    j = (i + rng.integers(1, n, size=n_negative)) % n  # uniform over j != i
    return matching, np.einsum("ij,ij->i", a[i], b[j])


def run_retrieval(
    store_path: str | os.PathLike,
    *,
    split: str | None = None,
    seed: int = 0,
    test_size: float = 0.1,
    ks: tuple[int, ...] = RETRIEVAL_KS,
    n_negative: int = N_NEGATIVE,
    device: str = "auto",
    chunk_size: int = 4096,
    plots_dir: str | os.PathLike | None = None,
) -> dict:
    """Evaluate retrieval on the whole store or on the held-out part of a split.

    Returns the `retrieve --json` dict of DESIGN.md: {"image_to_lesion": {"R@1", ...,
    "NDCG@1", ..., "mAP"}, "lesion_to_image": ..., ["image_to_patient", "patient_to_image"],
    "similarity_percentiles": {"matching": {"2", ...}, "non_matching": ..., ["retrieved"]},
    "n_queries", "n_patients", "split", "seed", "warnings"}.
    """
    warnings = WarningLog()
    check_seed(seed, "--seed")
    with FeatureStore.open(store_path) as store:
        for level in ("image", "lesion"):
            if level not in store.feature_names:
                raise SlimpError(
                    f"{store.path} has no features/{level}: retrieval needs image and "
                    f"lesion-metadata features (it has: {', '.join(store.feature_names) or 'none'})"
                )
        image, lesion = store.block("image"), store.block("lesion")
        patient = store.block("patient") if "patient" in store.feature_names else None
        phenotype = store.phenotype
        _, pcode = np.unique(store.patient_id, return_inverse=True)
        label = store.label
    rows = np.arange(len(image))
    train = None
    if split is not None:
        train, rows = make_split(
            split, label, pcode, seed=seed, test_size=test_size, warnings=warnings
        )
    if len(rows) < 2:
        raise SlimpError(f"{store_path}: retrieval needs at least 2 lesions, got {len(rows)}")
    kw = dict(device=device, query_chunk=chunk_size)
    if max(ks) > len(rows):
        warnings.add(f"R@{max(ks)} asked on only {len(rows)} lesions: it is 1 by construction")
    img, les = (image, lesion) if split is None else (image[rows], lesion[rows])
    ident = np.arange(len(rows))
    out: dict = {
        "image_to_lesion": rank_metrics(
            ranks_of_relevant(img, les, query_groups=ident, gallery_groups=ident, **kw), ks=ks
        ),
        "lesion_to_image": rank_metrics(
            ranks_of_relevant(les, img, query_groups=ident, gallery_groups=ident, **kw), ks=ks
        ),
    }
    _, first, p_of_row = np.unique(pcode[rows], return_index=True, return_inverse=True)
    if patient is not None:
        pats = patient[rows[first]]  # one metadata vector per patient (rows repeat it per lesion)
        pid = np.arange(len(first))
        out["image_to_patient"] = rank_metrics(
            ranks_of_relevant(img, pats, query_groups=p_of_row, gallery_groups=pid, **kw), ks=ks
        )
        out["patient_to_image"] = rank_metrics(
            ranks_of_relevant(pats, img, query_groups=pid, gallery_groups=p_of_row, **kw), ks=ks
        )
        if phenotype is not None:
            z = patient_phenotypes(img, les, p_of_row, len(first), *phenotype)
            out["phenotype_to_patient"] = rank_metrics(
                ranks_of_relevant(z, pats, query_groups=pid, gallery_groups=pid, **kw), ks=ks
            )
    matching, non_matching = similarity_samples(img, les, n_negative=n_negative, seed=seed)
    dists = {"matching": matching, "non_matching": non_matching}
    if train is not None and len(train):
        retrieved, _ = topk_cosine(img, lesion[train], k=1, **kw)
        dists["retrieved"] = retrieved[:, 0]
    out["similarity_percentiles"] = {k: percentiles(v) for k, v in dists.items() if len(v)}
    out.update(
        {
            "n_queries": int(len(rows)),
            "n_patients": int(len(first)),
            "split": split,
            "seed": seed if split else None,
            "warnings": list(warnings),
        }
    )
    if plots_dir is not None:
        from . import plots

        plots.ensure_dir(plots_dir)
        where = f"held-out {split} split (seed {seed})" if split else "whole store"
        names = {
            "matching": "matching metadata",
            "non_matching": "non-matching metadata",
            "retrieved": "metadata retrieved from training part",
        }
        plots.similarity_histograms(
            Path(plots_dir) / "similarity.png",
            {names[k]: v for k, v in dists.items()},
            title=f"Image-metadata cosine similarity, {where}",
        )
    return json_safe(out)
