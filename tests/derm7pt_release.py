"""A temporary Derm7pt release built from the shared subset, with the official index files.

The shared subset has no `meta/*_indexes.csv`; the real release (`release_v0/`) keeps them in
`meta/` beside `meta/meta.csv`, one column `indexes` of 0-based rows of meta.csv. Images are a
symlink to the shared `images/` (the data is never copied, never modified).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")
# where meta.csv and the index files go: the release's layout and the two others users make
LAYOUTS = {
    "release": ("meta/meta.csv", "meta"),
    "meta-folder": ("meta.csv", "meta"),
    "beside": ("meta.csv", "."),
}


def default_splits(n: int, seed: int = 0) -> dict[str, list[int]]:
    """About 40/20/40 % of n rows, shuffled (so a split is not a block of rows)."""
    order = np.random.default_rng(seed).permutation(n)
    a, b = round(0.4 * n), round(0.6 * n)
    return {
        "train": sorted(order[:a].tolist()),
        "valid": sorted(order[a:b].tolist()),
        "test": sorted(order[b:].tolist()),
    }


def make_release(
    dest: Path,
    source: Path,
    *,
    every: int = 1,
    layout: str = "release",
    splits: dict[str, list] | None = None,
) -> tuple[Path, pd.DataFrame, dict[str, list]]:
    """Write a release under `dest`: meta.csv = every `every`-th row of the shared table, the
    index files (`splits`: split -> cells of its `indexes` column; default `default_splits`;
    a split set to None writes no file) and an `images` symlink. Returns (dest, the written
    table, the splits written)."""
    table_at, index_dir = LAYOUTS[layout]
    table = pd.read_csv(source / "meta.csv", dtype=str, keep_default_na=False)
    table = table.iloc[::every].reset_index(drop=True)
    (dest / table_at).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(dest / table_at, index=False)
    splits = default_splits(len(table)) if splits is None else splits
    (dest / index_dir).mkdir(parents=True, exist_ok=True)
    for split, cells in splits.items():
        if cells is not None:
            pd.DataFrame({"indexes": cells}).to_csv(
                dest / index_dir / f"{split}_indexes.csv", index=False
            )
    os.symlink(source / "images", dest / "images")
    return dest, table, splits
