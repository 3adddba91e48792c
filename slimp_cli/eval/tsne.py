"""t-SNE of a store's features, benign vs malignant (paper Fig. 6): `probe --plots DIR` writes
`tsne.png` and the coordinates behind it, `tsne.json`.

Panels: the cumulative feature sets of Table 6's ablation that the store holds: image, image +
lesion, image + lesion + patient (pseudo levels with `--pseudo`). Each level is L2-normalised
before concatenation (as for the kNN probe), so the levels weigh equally. Rows: every row of
known malignancy, a seeded stratified subsample of at most `MAX_ROWS` (`side="holdout"`: only
the rows of patients held out of pre-training). When the store marks its rows train/holdout
(the run's own training data), the held-out rows are drawn apart from those the model trained
on, and `tsne.json` lists each row's side. scikit-learn's TSNE, PCA initialisation, perplexity
min(30, (n - 1) / 3), `random_state=seed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import json_safe, write_json
from ..features.store import LEVELS, FeatureStore
from .search import normalize

MAX_ROWS = 3000


def feature_sets(levels: Sequence[str]) -> list[tuple[str, ...]]:
    """Cumulative prefixes of image, lesion, patient among `levels` (image first)."""
    present = [lv for lv in LEVELS if lv in levels]
    return [tuple(present[: i + 1]) for i in range(len(present))]


def subsample(
    malignant: np.ndarray, max_rows: int, seed: int, among: np.ndarray | None = None
) -> np.ndarray:
    """Row indices of known malignancy (and `among`, a boolean mask, when given); at most
    `max_rows`, stratified, sorted."""
    known = malignant >= 0
    rows = np.flatnonzero(known if among is None else known & among)
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


SIDES = ("train", "holdout")


def tsne_data(
    store_path: str | os.PathLike,
    *,
    pseudo: str | None = None,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
    side: str | None = None,
) -> dict:
    """The t-SNE coordinates of a store's rows, one panel per cumulative feature set.

    `side` "holdout" / "train" keeps the rows of that side of the store's split only (an error
    when the store has no split). Returns {"panels": {name: [n, 2]}, "rows", "malignant",
    "split" (None without one), "lesion_id", "patient_id", "title"} (arrays of n rows).
    """
    if side is not None and side not in SIDES:
        raise SlimpError(f"t-SNE side {side!r}: choose train or holdout")
    with FeatureStore.open(store_path) as store:
        malignant = store.malignant.astype(np.int64)
        split = store.split
        if side is not None and split is None:
            raise SlimpError(
                f"{store.path} marks no rows train/holdout (not the run's training data)"
            )
        rows = subsample(malignant, max_rows, seed, None if side is None else split == side)
        if len(rows) == 0:
            raise SlimpError(f"{store.path}: no {side or ''} rows of known malignancy to plot")
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
    which = {None: "", "holdout": " held-out", "train": " training"}[side]
    return {
        "panels": panels,
        "rows": rows,
        "malignant": malignant[rows],
        "split": None if split is None else np.asarray(split)[rows],
        "lesion_id": lesion_id,
        "patient_id": patient_id,
        "title": f"t-SNE of {Path(store_path).name} features ({len(rows)}{which} lesions, "
        f"seed {seed})",
    }


def write_tsne(
    store_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    pseudo: str | None = None,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
    side: str | None = None,
) -> Path:
    """Write `tsne.png` + `tsne.json` into `out_dir`; returns the PNG's path."""
    from . import figures

    out_dir = figures.ensure_dir(out_dir)
    data = tsne_data(store_path, pseudo=pseudo, seed=seed, max_rows=max_rows, side=side)
    png = out_dir / "tsne.png"
    figures.tsne_panels(
        png, data["panels"], data["malignant"], title=data["title"], split=data["split"]
    )
    write_json(
        out_dir / "tsne.json",
        json_safe(
            {
                "store": str(store_path),
                "seed": seed,
                "rows": len(data["rows"]),
                "side": side,
                "method": "sklearn TSNE, init pca, perplexity min(30, (n-1)/3); levels "
                "L2-normalised then concatenated",
                "lesion_id": data["lesion_id"].tolist(),
                "patient_id": data["patient_id"].tolist(),
                "malignant": data["malignant"].tolist(),
                "split": None if data["split"] is None else data["split"].tolist(),
                "panels": {k: np.round(v, 4).tolist() for k, v in data["panels"].items()},
            }
        ),
    )
    return png
