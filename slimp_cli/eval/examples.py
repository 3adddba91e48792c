"""Qualitative metadata retrieval (paper Fig. 7): `extrapolate --examples K --out DIR`.

For K target images (seeded, half malignant where the target knows), the `per` reference
lesions whose *lesion-metadata* features are most similar to the target's image feature (the
first step of I->L->P; with `--strategy ii` the most similar reference *images*), shown as the
reference images those metadata rows belong to, with their metadata. Images and metadata rows
are read from the shards each store was embedded from (the store's config records the folder;
`reference_data` / `target_data` override it). Shards must be the ones embedded: the manifest
sha256 and every row's ids are checked.

Writes `DIR/retrieval-examples.png` (one row per target) and `retrieval-examples.json`
(per target: its ids, label and metadata; per retrieved lesion: store row, cosine similarity,
ids, label, lesion and patient metadata; `units`: the unit of each numerical field that has
one, also written after the number in the captions, e.g. `diameter_1=12.0 mm`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import json_safe, write_json
from ..data.shards import ShardIndex
from ..data.transforms import decode_image, pil_to_uint8, resize_center
from ..features.store import FeatureStore
from ..models import patient_record
from ..models.runs import sha256_file
from .search import topk_cosine

DISPLAY = 160  # pixels per picture in the panel
CAPTION_FIELDS = 3  # metadata fields under each picture (all of them in the JSON)
# Units of numerical fields, which the dataset schemas do not record: PAD-UFES-20's
# diameter_1/diameter_2 are in millimetres (Pacheco et al. 2020, the data article's field
# list); SLICE-3D, HIBA and `slimp synth` say so in the name (`*_mm`); ages are in years.
UNITS = {"diameter_1": "mm", "diameter_2": "mm", "age": "years"}


def unit_of(name: str) -> str | None:
    """The unit of a numerical metadata field, when known ("mm", "years"), else None."""
    if name in UNITS:
        return UNITS[name]
    if name.endswith("_mm"):
        return "mm"
    return None


def format_value(name: str, value) -> str:
    """A metadata value as shown under a picture: numbers with one decimal and their unit."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        unit = unit_of(name)
        return f"{float(value):.1f}" + (f" {unit}" if unit else "")
    return str(value)


def half_malignant(pool: np.ndarray, malignant: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """k rows of `pool` drawn without replacement, half of them malignant where the rows allow
    (the rest benign or unknown), sorted. Shape: pool [n] row numbers, malignant [n] per pool
    row; returns [min(k, n)] int64."""
    rng = np.random.default_rng(seed)
    pos, neg = pool[malignant == 1], pool[malignant != 1]
    n_pos = min(len(pos), (k + 1) // 2)
    n_neg = min(len(neg), k - n_pos)
    n_pos = min(len(pos), k - n_neg)
    picked = [
        rng.choice(pos, size=n_pos, replace=False),
        rng.choice(neg, size=n_neg, replace=False),
    ]
    return np.sort(np.concatenate(picked).astype(np.int64))


def store_shards(store: FeatureStore, override: str | os.PathLike | None, what: str):
    """The ShardIndex `store` was embedded from, and the (patient, lesion) pair of each row."""
    config = store.config
    folder = Path(override) if override is not None else Path(config.get("data") or "")
    if not str(folder) or not (folder / "manifest.json").is_file():
        raise SlimpError(
            f"{store.path}: its shards {str(folder) or '(not recorded)'} are not found; give "
            f"--{what}-data DIR (the folder it was embedded from)"
        )
    recorded = config.get("manifest_sha256")
    if recorded and sha256_file(folder / "manifest.json") != recorded:
        raise SlimpError(
            f"{folder}: not the shards {store.path} was embedded from (manifest sha256 differs)"
        )
    index = ShardIndex.open(folder)
    pairs = [(p, j) for p in range(len(index)) for j in range(len(index.patient(p).lesions))]
    if len(pairs) != store.n:
        raise SlimpError(f"{folder}: {len(pairs)} lesions, but {store.path} has {store.n} rows")
    return index, pairs


def check_sources(reference_path, target_path, *, reference_data=None, target_data=None) -> None:
    """Fail early (before `extrapolate` writes anything) when either store's shards are
    missing or are not the ones it was embedded from."""
    with FeatureStore.open(reference_path) as ref, FeatureStore.open(target_path) as tgt:
        store_shards(ref, reference_data, "reference")
        store_shards(tgt, target_data, "target")


def lesion_row(index: ShardIndex, pair: tuple[int, int]) -> dict:
    """One lesion of the shards: ids, label, malignancy, lesion and patient metadata."""
    rec = index.patient(pair[0])
    les = rec.lesions[pair[1]]
    return {
        "patient_id": rec.patient_id,
        "lesion_id": les["lesion_id"],
        "image_id": les.get("image_id"),
        "label": les.get("label"),
        "malignant": int(les.get("malignant", -1)),
        "lesion_metadata": les.get("fields") or {},
        "patient_metadata": patient_record(rec.fields, rec.derived),
    }


def lesion_picture(index: ShardIndex, pair: tuple[int, int], size: int = DISPLAY) -> np.ndarray:
    """A lesion's image from the shards, square. Shape: [size, size, 3] uint8."""
    rec = index.patient(pair[0])
    img = decode_image(rec.read_image(pair[1]), where=f"patient {rec.patient_id}")
    return pil_to_uint8(resize_center(img, size)).permute(1, 2, 0).numpy()


def _caption(row: dict, sim: float | None, fields: list[str]) -> str:
    head = f"{row['label'] or '?'}" + ("" if sim is None else f", cos {sim:.2f}")
    shown = []
    for name in fields:
        value = row["lesion_metadata"].get(name)
        if value is None:
            continue
        shown.append(f"{name[:18]}={format_value(name, value)[:16]}")
        if len(shown) == CAPTION_FIELDS:
            break
    return "\n".join([head, *shown])


def _check_rows(store: FeatureStore, index: ShardIndex, pairs, rows: np.ndarray) -> None:
    lesion_id = store.lesion_id
    for r in rows:
        les = index.patient(pairs[r][0]).lesions[pairs[r][1]]
        if les["lesion_id"] != lesion_id[r]:
            raise SlimpError(
                f"{store.path}: row {r} is lesion {lesion_id[r]} but the shards hold "
                f"{les['lesion_id']} there; re-embed or give the right --*-data folder"
            )


def retrieval_examples(
    reference_path: str | os.PathLike,
    target_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    k: int = 4,
    per: int = 3,
    strategy: str = "ilp",
    reference_data: str | os.PathLike | None = None,
    target_data: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Write the Fig. 7 panel and its JSON into `out`; returns the JSON dict."""
    from . import figures

    if k < 1 or per < 1:
        raise SlimpError(f"--examples {k}: must be at least 1")
    gallery_level = "image" if strategy == "ii" else "lesion"
    with FeatureStore.open(reference_path) as ref, FeatureStore.open(target_path) as tgt:
        if gallery_level not in ref.feature_names:
            raise SlimpError(f"{ref.path} has no features/{gallery_level} to retrieve from")
        ref_index, ref_pairs = store_shards(ref, reference_data, "reference")
        tgt_index, tgt_pairs = store_shards(tgt, target_data, "target")
        rows = half_malignant(np.arange(tgt.n), tgt.malignant, k, seed=seed)
        _check_rows(tgt, tgt_index, tgt_pairs, rows)
        queries = np.asarray(tgt.dataset("image")[rows.tolist()], dtype=np.float32)
        sims, idx = topk_cosine(queries, ref.dataset(gallery_level), k=per, device=device)
        _check_rows(ref, ref_index, ref_pairs, np.unique(idx))
        ref_fields = [f["name"] for f in (ref.schema or {}).get("lesion_features", [])]
    examples, panel = [], []
    for q, r in enumerate(rows):
        target = lesion_row(tgt_index, tgt_pairs[r])
        hits = []
        for s, j in zip(sims[q], idx[q]):
            hit = lesion_row(ref_index, ref_pairs[j])
            hits.append({"reference_row": int(j), "similarity": float(s), **hit})
        examples.append({"target_row": int(r), **target, "retrieved": hits})
        panel.append(
            {
                "image": lesion_picture(tgt_index, tgt_pairs[r]),
                "caption": f"{target['lesion_id']}\n{target['label'] or '?'}",
                "retrieved": [
                    {
                        "image": lesion_picture(ref_index, ref_pairs[h["reference_row"]]),
                        "caption": _caption(h, h["similarity"], ref_fields),
                    }
                    for h in hits
                ],
            }
        )
    out = figures.ensure_dir(out)
    what = "reference images" if strategy == "ii" else "reference lesion metadata"
    title = (
        f"Target images (left) and the {what} most similar to them (right: the images those "
        f"rows belong to)"
    )
    figures.retrieval_panel(out / "retrieval-examples.png", panel, title=title)
    report = json_safe(
        {
            "reference": str(reference_path),
            "target": str(target_path),
            "strategy": strategy,
            "query": "target image feature",
            "gallery": f"reference features/{gallery_level}",
            "seed": seed,
            "units": {f: unit_of(f) for f in ref_fields if unit_of(f)},
            "examples": examples,
        }
    )
    write_json(out / "retrieval-examples.json", report)
    return report
