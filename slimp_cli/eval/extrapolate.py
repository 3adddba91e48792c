"""Retrieval-based metadata extrapolation (paper Sec. 3.3, Fig. 2 right, App. D, E.7).

A target store with image features only gets pseudo lesion- and patient-metadata features
retrieved from a reference store embedded with the same model:
- ilp (I->L->P, the paper's method): h_hat = the reference lesion-metadata feature most similar
  to the target image feature w; z_hat = phenotype layer (reference `model/phenotype_weight`,
  `bias`) applied to concat(w, h_hat); x_hat = the reference patient-metadata feature most
  similar to z_hat, searched in the pool of unique reference patients. As in the paper the two
  pools are independent: x_hat need not belong to h_hat's patient.
- il (I->L): h_hat as above; x_hat = the patient features of h_hat's patient.
- ii (I->I): the most similar reference image; its lesion and patient features.
Output in the target store, `pseudo/<strategy>/`:
  lesion [N, D], patient [N, D] (omitted, with a warning, when the reference has no patient
  features), lesion_index [N] and patient_index [N] (reference store rows the vectors come
  from; for ilp, the patient's first row), similarity [N] (cosine of the first retrieval step),
  patient_similarity [N] (ilp only: cosine of z_hat and x_hat); attrs strategy, pool,
  reference, reference_config. The store is rewritten to a temporary file and renamed
  (store.PseudoWriter): never modified in place; a re-run replaces the group.
- pool (ilp): "patient" (default when the target has patient ids) retrieves one x_hat per
  target patient from its lesions' mean z_hat, as Sec. 3.3 describes; "lesion" one per lesion.
Searches are chunked (eval/search.py): queries x reference chunks with a running top-1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import json_safe
from ..features.store import PSEUDO_STRATEGIES, FeatureStore, PseudoWriter
from . import WarningLog
from .metrics import percentiles
from .search import iter_topk, topk_cosine

POOLS = ("patient", "lesion")


def take_rows(dset, idx: np.ndarray) -> np.ndarray:
    """dset[idx] for arbitrary (repeated, unsorted) idx; h5py wants increasing unique indices."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    return np.asarray(dset[uniq])[inverse]


def _check(ref: FeatureStore, target: FeatureStore, strategy: str, warnings: WarningLog) -> bool:
    """Validate inputs; returns whether pseudo patient features can be produced."""
    if strategy not in PSEUDO_STRATEGIES:
        raise SlimpError(f"--strategy {strategy!r}: choose one of {', '.join(PSEUDO_STRATEGIES)}")
    if "image" not in target.feature_names:
        raise SlimpError(
            f"{target.path} has no features/image: the target needs image features (slimp embed --image-only)"
        )
    need = ["lesion"] + (["image"] if strategy == "ii" else [])
    for level in need:
        if level not in ref.feature_names:
            raise SlimpError(
                f"{ref.path} has no features/{level}: strategy {strategy} needs reference "
                f"{' and '.join(need)} features (it has: {', '.join(ref.feature_names) or 'none'})"
            )
    d = target.dims["image"]
    for level in ref.feature_names:
        if ref.dims[level] != d:
            raise SlimpError(
                f"{ref.path}: features/{level} has dimension {ref.dims[level]} but {target.path} "
                f"images have {d}; embed both with the same model"
            )
    ref_ck, tgt_ck = ref.config.get("checkpoint_sha256"), target.config.get("checkpoint_sha256")
    if ref_ck and tgt_ck and ref_ck != tgt_ck:
        raise SlimpError(
            f"{target.path} was embedded with a different checkpoint than {ref.path} "
            f"(checkpoint_sha256 {tgt_ck[:12]} vs {ref_ck[:12]}); re-embed it with the reference model"
        )
    has_patient = "patient" in ref.feature_names
    if not has_patient:
        warnings.add(
            f"{ref.path} has no patient features (flat model?): pseudo patient features omitted"
        )
    elif strategy == "ilp":
        ph = ref.phenotype
        if ph is None:
            raise SlimpError(
                f"{ref.path} has no model/phenotype_weight: strategy ilp needs the phenotype layer "
                "of a nested model (use --strategy il or ii)"
            )
        if ph[0].shape != (d, 2 * d):
            raise SlimpError(
                f"{ref.path}: phenotype weight has shape {ph[0].shape}, expected {(d, 2 * d)}"
            )
    return has_patient


def extrapolate(
    reference_path: str | os.PathLike,
    target_path: str | os.PathLike,
    *,
    strategy: str = "ilp",
    pool: str | None = None,
    device: str = "auto",
    chunk_size: int = 4096,
) -> dict:
    """Write `pseudo/<strategy>/` into the target store. Returns a summary dict:
    {"strategy", "pool", "n", "levels", "similarity": percentiles, ["patient_similarity"],
    "warnings"}.

    `pool` (ilp): "patient" pools z_hat over each target patient's lesions before retrieving
    one x_hat per patient (Sec. 3.3: "a single patient-level vector z_p"; z is affine in
    concat(w, h), so the mean of the per-lesion z_hat is Linear(mean of concat(w, h_hat)));
    "lesion" retrieves an x_hat per lesion. None = "patient" when the target's schema has
    patient ids, else "lesion".
    """
    reference_path, target_path = Path(reference_path), Path(target_path)
    if (
        reference_path.exists()
        and target_path.exists()
        and reference_path.resolve() == target_path.resolve()
    ):
        raise SlimpError(f"{target_path}: REFERENCE and TARGET are the same store")
    warnings = WarningLog()
    with FeatureStore.open(reference_path) as ref, FeatureStore.open(target_path) as tgt:
        has_patient = _check(ref, tgt, strategy, warnings)
        n, d = tgt.n, tgt.dims["image"]
        has_ids = bool((tgt.schema or {}).get("patient_id"))
        _, target_patient = np.unique(tgt.patient_id, return_inverse=True)
    if pool is None:
        pool = "patient" if has_ids else "lesion"
    if pool not in POOLS:
        raise SlimpError(f"--pool {pool!r}: choose one of {', '.join(POOLS)}")
    per_patient = pool == "patient" and strategy == "ilp" and has_patient
    if n == 0:
        raise SlimpError(f"{target_path}: the target store has no rows")
    kw = dict(device=device, query_chunk=chunk_size)
    levels = ["lesion"] + (["patient"] if has_patient else [])
    widths: dict[str, int | None] = {"lesion": d, "lesion_index": None, "similarity": None}
    if has_patient:
        widths.update(patient=d, patient_index=None)
    if has_patient and strategy == "ilp":
        widths["patient_similarity"] = None
    with FeatureStore.open(reference_path) as ref, FeatureStore.open(target_path) as tgt:
        attrs = {
            "strategy": strategy,
            "reference": str(reference_path),
            "reference_config": json.dumps(ref.config, sort_keys=True),
            "levels": json.dumps(levels),
        }
        pool_rows = None
        if has_patient and strategy == "ilp":
            weight, bias = ref.phenotype
            # pool of unique reference patients: their first row carries the patient vector
            _, pool_rows = np.unique(ref.patient_id, return_index=True)
            pool_rows = np.sort(pool_rows)
            patient_pool = take_rows(ref.dataset("patient"), pool_rows)
        gallery = ref.dataset("image" if strategy == "ii" else "lesion")
        target_image = tgt.dataset("image")
        if per_patient:
            z_sum = np.zeros((int(target_patient.max()) + 1, d), dtype=np.float64)
        attrs["pool"] = pool if strategy == "ilp" else "lesion"
        with PseudoWriter(target_path, strategy, n=n, widths=widths, attrs=attrs) as out:
            for start, sims, idx in iter_topk(target_image, gallery, k=1, **kw):
                stop = start + len(idx)
                j = idx[:, 0]
                h_hat = take_rows(ref.dataset("lesion"), j)
                out["lesion"][start:stop] = h_hat
                out["lesion_index"][start:stop] = j
                out["similarity"][start:stop] = sims[:, 0]
                if per_patient:  # accumulate z_hat per target patient; retrieve after the pass
                    w = np.asarray(target_image[start:stop], dtype=np.float32)
                    z_hat = np.concatenate([w, h_hat], axis=1) @ weight.T + bias
                    np.add.at(z_sum, target_patient[start:stop], z_hat.astype(np.float64))
                elif has_patient and strategy == "ilp":
                    w = np.asarray(target_image[start:stop], dtype=np.float32)
                    z_hat = np.concatenate([w, h_hat], axis=1) @ weight.T + bias
                    p_sims, p_idx = topk_cosine(z_hat, patient_pool, k=1, **kw)
                    rows = pool_rows[p_idx[:, 0]]
                    out["patient"][start:stop] = patient_pool[p_idx[:, 0]]
                    out["patient_index"][start:stop] = rows
                    out["patient_similarity"][start:stop] = p_sims[:, 0]
                elif has_patient:  # il, ii: the retrieved lesion's own patient
                    out["patient"][start:stop] = take_rows(ref.dataset("patient"), j)
                    out["patient_index"][start:stop] = j
            if per_patient:
                counts = np.bincount(target_patient, minlength=len(z_sum))[:, None]
                z_p = (z_sum / np.maximum(counts, 1)).astype(np.float32)  # one z_hat per patient
                p_sims, p_idx = topk_cosine(z_p, patient_pool, k=1, **kw)
                for start in range(0, n, chunk_size):
                    rows = target_patient[start : start + chunk_size]
                    best = p_idx[rows, 0]
                    out["patient"][start : start + len(rows)] = patient_pool[best]
                    out["patient_index"][start : start + len(rows)] = pool_rows[best]
                    out["patient_similarity"][start : start + len(rows)] = p_sims[rows, 0]
    with FeatureStore.open(target_path) as tgt:
        written = tgt.pseudo(strategy)
    summary = {
        "strategy": strategy,
        "pool": attrs["pool"],
        "n": n,
        "levels": levels,
        "similarity": percentiles(written["similarity"]),
    }
    if "patient_similarity" in written:
        summary["patient_similarity"] = percentiles(written["patient_similarity"])
    summary["warnings"] = list(warnings)
    return json_safe(summary)
