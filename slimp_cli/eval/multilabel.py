"""`probe --task derm7pt-multilabel`: the seven-point checklist criteria as probe targets.

Derm7pt annotates every case with the seven dermoscopic criteria of the 7-point checklist
(Kawahara et al. 2019): pigment network, streaks, pigmentation, regression structures, dots and
globules, blue-whitish veil, vascular structures. Each is a categorical target (e.g. absent /
typical / atypical). This task probes how well frozen *image* features (optionally with pseudo
metadata from `slimp extrapolate`) predict each criterion: one multiclass linear probe / kNN per
criterion on the same splits and seeds, plus the mean over criteria.

The targets are read back from the store's `raw/lesion` one-hot groups, so any store of Derm7pt
data (or any dataset whose lesion metadata holds these columns) works. Lesion features learned
from the same metadata encode the criteria themselves, so they are refused as inputs (a leak).
Rows where a criterion is missing are left out of that criterion's probe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import SlimpError
from ..paths import json_safe
from ..store import PSEUDO_STRATEGIES, FeatureStore
from . import WarningLog
from .knn import knn_proba
from .metrics import classification_metrics, summarize
from .options import check_probe_options
from .probe import DEFAULT_C, METHODS, linear_proba
from .search import normalize
from .splits import make_split

CRITERIA = (
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
)


def criterion_targets(
    x_raw: np.ndarray, columns: list[str], criterion: str
) -> tuple[np.ndarray, list[str]]:
    """Decode one criterion from its one-hot raw columns.

    Shape: x_raw [n, R] -> (y [n] in 0..C-1, or -1 where missing/unknown; class names [C]).
    """
    prefix = f"{criterion}="
    cols = [
        (j, c[len(prefix) :])
        for j, c in enumerate(columns)
        if c.startswith(prefix) and c != f"{criterion}=missing"
    ]
    if not cols:
        raise SlimpError(
            f"--task derm7pt-multilabel: the store's raw/lesion has no '{criterion}' columns "
            "(is this Derm7pt data ingested with the derm7pt schema?)"
        )
    onehot = x_raw[:, [j for j, _ in cols]]
    y = np.where(onehot.sum(1) == 1, onehot.argmax(1), -1)
    return y, [v for _, v in cols]


def run_multilabel(
    store_path: str | os.PathLike,
    *,
    features: Sequence[str] | None = None,
    methods: Sequence[str] = METHODS,
    split: str = "random",
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 20,
    knn_temperature: float = 0.07,
    C: float = DEFAULT_C,
    cv: bool = False,
    pseudo: str | None = None,
    test_size: float = 0.1,
    device: str = "auto",
) -> dict:
    """Probe the seven criteria; returns the `probe --json` format with a `target` per result
    (the criterion, or "mean" for the average over criteria of each metric's mean)."""
    warnings = WarningLog()
    names = list(features) if features else ["image"] + (["lesion", "patient"] if pseudo else [])
    if pseudo is not None and pseudo not in PSEUDO_STRATEGIES:
        raise SlimpError(f"--pseudo {pseudo!r}: choose one of {', '.join(PSEUDO_STRATEGIES)}")
    if "lesion" in names and pseudo is None:
        raise SlimpError(
            "--task derm7pt-multilabel: lesion features are learned from the criteria "
            "themselves (a leak); use --features image, or pseudo features (--pseudo)"
        )
    for m in methods:
        if m not in METHODS:
            raise SlimpError(f"--method {m!r}: choose from {', '.join(METHODS)}")
    if not seeds:
        raise SlimpError("--seeds: give at least one seed")
    check_probe_options(seeds=seeds, C=C, knn_temperature=knn_temperature)
    with FeatureStore.open(store_path) as store:
        raw = store.raw("lesion")
        if raw is None:
            raise SlimpError(f"{store_path}: no raw/lesion metadata to read the criteria from")
        pseudo_arrays = store.pseudo(pseudo) if pseudo else {}
        blocks = {}
        for name in names:
            if name == "image" or not pseudo:
                if name not in store.feature_names:
                    raise SlimpError(f"--features {name}: {store_path} has no features/{name}")
                blocks[name] = np.asarray(store.block(name), dtype=np.float32)
            else:
                if name not in pseudo_arrays:
                    raise SlimpError(
                        f"--features {name}: {store_path} has no pseudo/{pseudo}/{name}"
                    )
                blocks[name] = np.asarray(pseudo_arrays[name], dtype=np.float32)
        groups = np.asarray(store.patient_id)
    x_raw, columns, _ = raw
    x_lin = np.concatenate([blocks[n] for n in names], axis=1)
    x_knn = np.concatenate([normalize(blocks[n]) for n in names], axis=1)

    results, per_method = [], {m: [] for m in methods}
    for criterion in CRITERIA:
        y_all, classes = criterion_targets(x_raw, columns, criterion)
        rows = np.flatnonzero(y_all >= 0)
        present = np.unique(y_all[rows])
        if len(present) < 2:
            warnings.add(f"{criterion}: a single value among annotated rows; skipped")
            continue
        y = np.searchsorted(present, y_all[rows])
        class_names = [classes[c] for c in present]
        runs = {m: [] for m in methods}
        for seed in seeds:
            train, test = make_split(
                split, y, groups[rows], seed=int(seed), test_size=test_size, warnings=warnings
            )
            for method in methods:
                if method == "linear":
                    proba, _ = linear_proba(
                        x_lin[rows][train],
                        y[train],
                        x_lin[rows][test],
                        n_classes=len(present),
                        C=C,
                        cv=cv,
                        seed=int(seed),
                        warnings=warnings,
                    )
                else:
                    proba = knn_proba(
                        x_knn[rows][train],
                        y[train],
                        x_knn[rows][test],
                        n_classes=len(present),
                        k=k,
                        knn_temperature=knn_temperature,
                        device=device,
                        warnings=warnings,
                    )
                runs[method].append(
                    classification_metrics(
                        y[test],
                        proba,
                        task="multiclass",
                        class_names=class_names,
                        warnings=warnings,
                    )
                )
        for method in methods:
            summary = summarize(runs[method])
            per_method[method].append(summary)
            results.append(
                _result(method, criterion, class_names, summary, names, split, seeds, pseudo)
            )
    for method in methods:
        if per_method[method]:
            keys = per_method[method][0].keys()
            mean = {
                key: {"mean": _nanmean([s[key]["mean"] for s in per_method[method]]), "std": None}
                for key in keys
            }
            results.append(_result(method, "mean", None, mean, names, split, seeds, pseudo))
    if not results:
        raise SlimpError(f"{store_path}: no seven-point criterion has two annotated values")
    return json_safe({"task": "derm7pt-multilabel", "results": results, "warnings": list(warnings)})


def _nanmean(values: list) -> float | None:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _result(method, target, classes, metrics, names, split, seeds, pseudo) -> dict:
    return {
        "method": method,
        "task": "derm7pt-multilabel",
        "target": target,
        "classes": classes,
        "split": split,
        "features": names,
        "label": "multiclass",
        "low_shot": None,
        "seeds": [int(s) for s in seeds],
        "metrics": metrics,
        "pseudo": pseudo,
    }
