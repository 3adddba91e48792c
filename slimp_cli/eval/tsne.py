"""t-SNE of a store's features, benign vs malignant (paper Fig. 6): `probe --plots DIR` writes
`tsne.png` and the coordinates behind it, `tsne.json`.

Panels: the cumulative feature sets of Table 6's ablation that the store holds: image, image +
lesion, image + lesion + patient (pseudo levels with `--pseudo`). Each level is L2-normalised
before concatenation (as for the kNN probe), so the levels weigh equally. Rows: every row of
known malignancy, a seeded stratified subsample of at most `MAX_ROWS`. scikit-learn's TSNE,
PCA initialisation, perplexity min(30, (n - 1) / 3), `random_state=seed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..paths import json_safe, write_json
from ..store import LEVELS, FeatureStore
from .search import normalize

MAX_ROWS = 3000


def feature_sets(levels: Sequence[str]) -> list[tuple[str, ...]]:
    """Cumulative prefixes of image, lesion, patient among `levels` (image first)."""
    present = [lv for lv in LEVELS if lv in levels]
    return [tuple(present[: i + 1]) for i in range(len(present))]


def subsample(malignant: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Row indices of known malignancy; at most `max_rows`, stratified, sorted."""
    rows = np.flatnonzero(malignant >= 0)
    if len(rows) <= max_rows:
        return rows
    rng = np.random.default_rng(seed)
    keep = []
    for value in (0, 1):
        group = rows[malignant[rows] == value]
        k = int(round(max_rows * len(group) / len(rows)))
        keep.append(rng.choice(group, size=min(k, len(group)), replace=False))
    return np.sort(np.concatenate(keep))


def embed_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE coordinates. Shape: [n, D] -> [n, 2]."""
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        x
    )


def write_tsne(
    store_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    pseudo: str | None = None,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
) -> Path:
    """Write `tsne.png` + `tsne.json` into `out_dir`; returns the PNG's path."""
    from . import figures

    out_dir = figures.ensure_dir(out_dir)
    with FeatureStore.open(store_path) as store:
        malignant = store.malignant.astype(np.int64)
        rows = subsample(malignant, max_rows, seed)
        blocks: dict[str, np.ndarray] = {}
        arrays = store.pseudo(pseudo) if pseudo else {}
        for level in LEVELS:
            if level == "image" or not pseudo:
                if level in store.feature_names:
                    blocks[level] = normalize(np.asarray(store.block(level), np.float32)[rows])
            elif level in arrays:
                blocks[level] = normalize(np.asarray(arrays[level], np.float32)[rows])
        lesion_id, patient_id = store.lesion_id[rows], store.patient_id[rows]
    panels = {}
    for names in feature_sets(list(blocks)):
        label = " + ".join(names) + (f" ({pseudo})" if pseudo and names != ("image",) else "")
        panels[label] = embed_2d(np.concatenate([blocks[n] for n in names], axis=1), seed)
    png = out_dir / "tsne.png"
    figures.tsne_panels(
        png,
        panels,
        malignant[rows],
        title=f"t-SNE of {Path(store_path).name} features ({len(rows)} lesions, seed {seed})",
    )
    write_json(
        out_dir / "tsne.json",
        json_safe(
            {
                "store": str(store_path),
                "seed": seed,
                "rows": len(rows),
                "method": "sklearn TSNE, init pca, perplexity min(30, (n-1)/3); levels "
                "L2-normalised then concatenated",
                "lesion_id": lesion_id.tolist(),
                "patient_id": patient_id.tolist(),
                "malignant": malignant[rows].tolist(),
                "panels": {k: np.round(v, 4).tolist() for k, v in panels.items()},
            }
        ),
    )
    return png
