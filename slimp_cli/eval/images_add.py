"""What the images add: a store's model features against the metadata-only logistic regression,
paired on the same held-out rows (issue 18's table; benchmarks/paper_tables.py calls it).

`what_images_add(store)` runs two paired comparisons (eval/compare.py) of the malignant task:
- "model": the model's features (image + lesion + patient, whatever the store has) vs
  baseline-logreg on the raw metadata;
- "metadata+model": the raw metadata and the model's features together vs baseline-logreg,
  so that a model only has to add to the metadata, not re-learn it.
Each row carries both sides' AUC, pAUC above 80% TPR and balanced accuracy, their differences
with patient-bootstrap intervals, and DeLong's p for the AUC difference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..core.errors import SlimpError
from ..features.store import BRANCH_LEVELS, LEVELS, FeatureStore
from . import WarningLog
from .bootstrap import DEFAULT_RESAMPLES
from .compare import RAW, available, has_raw

METADATA = "baseline-logreg"


def model_levels(store: FeatureStore, pseudo: str | None = None) -> list[str]:
    """The levels a probe of this store uses by default (the model's full features)."""
    have = [w for w in available(store, store.pseudo(pseudo) if pseudo else None) if w in LEVELS]
    return [k for k in have if k not in BRANCH_LEVELS] or have


def what_images_add(
    store_path: str | os.PathLike,
    *,
    features: Sequence[str] | None = None,
    label: str = "binary",
    split: str | None = None,
    seeds: Sequence[int] = (0,),
    bootstrap: int = DEFAULT_RESAMPLES,
    C: float = 1.0,
    cv: bool = False,
    pseudo: str | None = None,
    test_size: float = 0.1,
) -> dict:
    """The "what the images add" comparison of one store.

    Returns {"metadata": "baseline-logreg", "features": [levels], "rows": [{"name": "model",
    **comparison}, {"name": "metadata+model", **comparison}], "split": {...}, "warnings":
    [...]}, each comparison as `probe --json` writes it (eval/compare.py paired_comparison).
    `features` None = the model's full features; the other arguments are run_probe's.
    """
    from .probe import run_probe  # probe imports this package's modules; import on use

    with FeatureStore.open(store_path) as store:
        if not has_raw(store):
            raise SlimpError(
                f"{store_path} has no raw metadata (raw/): nothing to compare the model with"
            )
        levels = list(features) if features else model_levels(store, pseudo)
    model = "+".join(levels)
    rows, warnings, split_block = [], WarningLog(), None
    for name, side in (("model", model), ("metadata+model", f"{RAW}+{model}")):
        report = run_probe(
            store_path,
            label=label,
            methods=(),
            split=split,
            seeds=seeds,
            C=C,
            cv=cv,
            pseudo=pseudo,
            test_size=test_size,
            bootstrap=bootstrap,
            compare=(side, METADATA),
            subgroups=[],
        )
        for w in report["warnings"]:
            warnings.add(w)
        split_block = report["split"]
        if report.get("comparison") is not None:
            rows.append({"name": name, **report["comparison"]})
    return {
        "metadata": METADATA,
        "features": levels,
        "rows": rows,
        "split": split_block,
        "warnings": list(warnings),
    }
