"""Image <-> metadata retrieval on a feature store (paper Sec. 4.5, Tables 4, 5, 20, 21, Fig. 3).

Tasks (instance-level: the relevant item of a query is its own counterpart). A store row is an
image; relevance is by lesion id, because two images of one lesion carry the same lesion
metadata (PAD: 2,298 images of 1,641 lesions):
- image_to_lesion: queries = the N images; gallery = the lesions' metadata records, one per
  lesion (`lesion_records`: a twin row whose lesion vector equals its lesion's first row's is the
  same record); the relevant items of an image are its own lesion's records, so a twin image's
  metadata is the answer, not a non-relevant tie. lesion_to_image: queries = those records,
  gallery = the N images; every image of the lesion is relevant (first-relevant convention,
  below).
- image_to_patient: gallery = the P unique patients' metadata vectors; the relevant item of
  lesion i is its patient's vector. patient_to_image: queries = the P patients, gallery = the N
  images; a patient's images are all relevant and the rank is that of the best-ranked one
  (first-relevant convention: R@k = a relevant image in the top k, NDCG@k = 1/log2(rank+1),
  "mAP" = mean 1/rank).
- phenotype_to_patient (nested stores with the phenotype layer): queries = each patient's
  phenotype z_p = Linear(mean of concat(w, h) over its evaluated lesions), gallery = the unique
  patient vectors: the retrieval the outer loss trains.
Ties are broken at random (eval/metrics.rank_metrics): metadata embeddings are functions of
discrete inputs, so equal metadata (HAM10000's age/sex/site, PAD's all-missing rows) gives equal
vectors, and each tied item counts half (mid-rank); R@k, NDCG and mAP are expectations.
Counting is chunked (eval/search.py), so no N x N matrix is ever built.

Similarity percentiles: "matching" = cos(image_i, lesion_i) over the evaluated images;
"non_matching" = cos(image_i, lesion_j) over `n_negative` random pairs of rows of different
lesions (seeded; a twin's metadata is its own lesion's, not a non-matching pair);
with a split, "retrieved" = cos of each held-out image with its most similar lesion metadata
from the training part (Fig. 3's "retrieved from the training set").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import SlimpError, check_seed
from ..core.paths import json_safe
from ..features.store import FeatureStore
from . import WarningLog
from .metrics import RETRIEVAL_KS, percentiles, rank_metrics
from .search import GALLERY_CHUNK, normalize, rank_counts, topk_cosine
from .splits import SplitInfo

N_NEGATIVE = 100_000
# Two rows of one lesion whose unit lesion vectors differ by at most this much (any coordinate)
# hold the same metadata record: embedding them in different batches may move a few ulps.
DUPLICATE_TOLERANCE = 1e-5


def lesion_codes(lesion_id: np.ndarray) -> np.ndarray:
    """Per row, a lesion code 0..L-1 (rows of one lesion share it). Shape: [N] ids -> [N] int64."""
    return np.unique(np.asarray(lesion_id).astype(str), return_inverse=True)[1].astype(np.int64)


def lesion_records(lesion: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Rows that are distinct lesion-metadata records: per lesion its first row, and any other row
    whose unit lesion vector differs from that first row's by more than DUPLICATE_TOLERANCE.

    Shape: lesion [N, D], codes [N] (`lesion_codes`) -> sorted row indices [R], L <= R <= N.
    """
    codes = np.asarray(codes)
    _, first = np.unique(codes, return_index=True)
    first_of_row = first[np.searchsorted(np.unique(codes), codes)]
    unit = normalize(lesion)
    differs = np.abs(unit - unit[first_of_row]).max(axis=1) > DUPLICATE_TOLERANCE
    return np.flatnonzero((np.arange(len(codes)) == first_of_row) | differs)


def ranks_of_relevant(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    device: str = "cpu",
    query_chunk: int = 4096,
    gallery_chunk: int = GALLERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Where the best relevant gallery item of each query ranks: (greater, tied) counts of
    non-relevant items strictly more / exactly as similar (feed them to `rank_metrics`).

    Gallery item j is relevant to query i when gallery_groups[j] == query_groups[i]; every
    query needs at least one.
    Shape: queries [Nq, D], gallery [Ng, D], query_groups [Nq], gallery_groups [Ng]
    (non-negative ints) -> (greater [Nq], tied [Nq]) int64.
    """
    return rank_counts(
        queries,
        gallery,
        query_groups=np.asarray(query_groups, dtype=np.int64),
        gallery_groups=np.asarray(gallery_groups, dtype=np.int64),
        device=device,
        query_chunk=query_chunk,
        gallery_chunk=gallery_chunk,
    )


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
    image: np.ndarray,
    lesion: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_negative: int = N_NEGATIVE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(matching [N] = cos(image_i, lesion_i), non_matching [n_negative] = cos(image_i,
    lesion_j) over random pairs with groups[j] != groups[i]: i uniform, then j uniform over the
    rows of the other groups).

    Shape: image, lesion [N, D], groups [N] ints (lesion codes; None = every row its own group).
    No pair when a single group is left.
    """
    a, b = normalize(image), normalize(lesion)
    matching = np.einsum("ij,ij->i", a, b)
    n = len(a)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    order = np.argsort(groups, kind="stable")  # each group's rows form one block of `order`
    sorted_groups = groups[order]
    start = np.searchsorted(sorted_groups, groups, side="left")
    size = np.searchsorted(sorted_groups, groups, side="right") - start
    if n < 2 or size.max() == n:
        return matching, np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_negative)
    # a position among the n - size[i] rows outside i's block, then skip over the block
    r = rng.integers(0, n - size[i])
    j = order[np.where(r < start[i], r, r + size[i])]
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
    split_file: str | os.PathLike | None = None,
) -> dict:
    """Evaluate retrieval on the held-out part of a split, or on the whole store.

    `split` None = "holdout" (the run's held-out patients) when the store carries them, else
    "all" (every row). "random" / "patient" draw a 90/10 split with `seed`; "official" (or
    `split_file`, a CSV of id, split) evaluates the test cases of the fixed split. Pairs the model
    was trained to match are flagged: the JSON's "split" block and a warning say how many
    evaluated rows pre-training saw.

    Returns the `retrieve --json` dict of DESIGN.md: {"image_to_lesion": {"R@1", ...,
    "NDCG@1", ..., "mAP"}, "lesion_to_image": ..., ["image_to_patient", "patient_to_image"],
    "similarity_percentiles": {"matching": {"2", ...}, "non_matching": ..., ["retrieved"]},
    "n_queries" (images evaluated), "n_lesions", "n_patients", "split", "seed", "warnings"}.
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
        lesion_ids = store.lesion_id
        split_info = SplitInfo.of(
            store, np.arange(store.n), split_file=split_file, warnings=warnings
        )
    rows = np.arange(len(image))
    train = None
    split = split_info.choose(split, otherwise="all", extra=("all",))
    if split == "all":
        split_info.note_seen("all", rows, warnings)
    else:
        train, rows = split_info.split(
            split, label, pcode, seed=seed, test_size=test_size, warnings=warnings
        )
    if len(rows) < 2:
        raise SlimpError(f"{store_path}: retrieval needs at least 2 lesions, got {len(rows)}")
    kw = dict(device=device, query_chunk=chunk_size)
    if max(ks) > len(rows):
        warnings.add(f"R@{max(ks)} asked on only {len(rows)} lesions: it is 1 by construction")
    img, les = (image, lesion) if split == "all" else (image[rows], lesion[rows])
    # relevance by lesion: a twin image's metadata is its lesion's (docs/method.md)
    lcode = lesion_codes(lesion_ids[rows])
    records = lesion_records(les, lcode)
    out: dict = {
        "image_to_lesion": rank_metrics(
            *ranks_of_relevant(
                img, les[records], query_groups=lcode, gallery_groups=lcode[records], **kw
            ),
            ks=ks,
        ),
        "lesion_to_image": rank_metrics(
            *ranks_of_relevant(
                les[records], img, query_groups=lcode[records], gallery_groups=lcode, **kw
            ),
            ks=ks,
        ),
    }
    _, first, p_of_row = np.unique(pcode[rows], return_index=True, return_inverse=True)
    if patient is not None:
        pats = patient[rows[first]]  # one metadata vector per patient (rows repeat it per lesion)
        pid = np.arange(len(first))
        out["image_to_patient"] = rank_metrics(
            *ranks_of_relevant(img, pats, query_groups=p_of_row, gallery_groups=pid, **kw), ks=ks
        )
        out["patient_to_image"] = rank_metrics(
            *ranks_of_relevant(pats, img, query_groups=pid, gallery_groups=p_of_row, **kw), ks=ks
        )
        if phenotype is not None:
            z = patient_phenotypes(img, les, p_of_row, len(first), *phenotype)
            out["phenotype_to_patient"] = rank_metrics(
                *ranks_of_relevant(z, pats, query_groups=pid, gallery_groups=pid, **kw), ks=ks
            )
    matching, non_matching = similarity_samples(
        img, les, groups=lcode, n_negative=n_negative, seed=seed
    )
    dists = {"matching": matching, "non_matching": non_matching}
    if train is not None and len(train):
        retrieved, _ = topk_cosine(img, lesion[train], k=1, **kw)
        dists["retrieved"] = retrieved[:, 0]
    out["similarity_percentiles"] = {k: percentiles(v) for k, v in dists.items() if len(v)}
    out.update(
        {
            "n_queries": int(len(rows)),
            "n_lesions": int(lcode.max()) + 1,
            "n_patients": int(len(first)),
            "split": split_info.describe(split)
            if split != "all"
            else {
                "kind": "all",
                "grouped_by": "every row of the store",
                "holdout_fingerprint": split_info.fingerprint,
                "test_rows_seen_in_pretraining": split_info.seen,
                "seeds_vary": "nothing",
            },
            "seed": seed if split in ("random", "patient") else None,
            "warnings": list(warnings),
        }
    )
    if plots_dir is not None:
        from . import plots

        plots.ensure_dir(plots_dir)
        where = {"all": "whole store", "holdout": "held-out patients"}.get(
            split, f"held-out {split} split (seed {seed})"
        )
        names = {
            "matching": "matching metadata",
            "non_matching": "metadata of other lesions",
            "retrieved": "metadata retrieved from training part",
        }
        plots.similarity_histograms(
            Path(plots_dir) / "similarity.png",
            {names[k]: v for k, v in dists.items()},
            title=f"Image-metadata cosine similarity, {where}",
        )
    return json_safe(out)
