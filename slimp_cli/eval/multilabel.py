"""`probe --task derm7pt-multilabel`: the diagnosis and the seven-point criteria as probe targets.

Derm7pt annotates every case with the seven dermoscopic criteria of the 7-point checklist
(Kawahara et al. 2019): pigment network, streaks, pigmentation, regression structures, dots and
globules, blue-whitish veil, vascular structures. With the diagnosis they are the 8 labels of
SM3's multi-label classification (SM3 paper Sec. III-A). This task probes how well frozen
*image* features (optionally with pseudo metadata from `slimp extrapolate`) predict each label:
one multiclass linear probe / kNN per label on the same splits and seeds, plus the mean.

Labels use Derm7pt's grouped classes (Kawahara et al.; SM3 Table I): DIAG = BCC, NEV, MEL, MISC,
SK; PN = ABS, TYP, ATP; BWV = ABS, PRS; VS = ABS, REG (arborizing, comma, hairpin, within
regression, wreath), IR (dotted, linear irregular); PIG = ABS, REG (diffuse/localized regular),
IR (diffuse/localized irregular); STR and DaG = ABS, REG, IR; RS = ABS, PRS (blue areas, white
areas, combinations). A value outside these maps is kept as its own class. Besides the
multiclass metrics, each label reports the paper's class (MEL for DIAG, the abnormal class of
each criterion: BWV PRS, DaG IR, PIG IR, PN ATP, RS PRS, STR IR, VS IR) one-vs-rest: its AUC,
sensitivity, specificity and precision (`eval.metrics.class_metrics`), and `table` lays them
out as the paper's Table I (labels as columns, AVG = their mean).

The targets are read back from the store's `raw/lesion` one-hot groups, so any store of Derm7pt
data (or any dataset whose lesion metadata holds these columns) works. Lesion features learned
from the same metadata encode the criteria themselves, so they are refused as inputs (a leak).
Rows where a criterion is missing are left out of that criterion's probe.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ..core.errors import SlimpError
from ..core.paths import json_safe
from ..features.store import PSEUDO_STRATEGIES, FeatureStore
from . import WarningLog
from .knn import knn_proba
from .metrics import class_metrics, classification_metrics, summarize
from .options import check_probe_options
from .probe import DEFAULT_C, METHODS, linear_proba
from .search import normalize
from .splits import SplitInfo

CRITERIA = (
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
)
DIAGNOSIS = "diagnosis"  # the label column of the store (its `label` / `classes`)
SHORT = {
    "diagnosis": "DIAG",
    "pigment_network": "PN",
    "blue_whitish_veil": "BWV",
    "vascular_structures": "VS",
    "pigmentation": "PIG",
    "streaks": "STR",
    "dots_and_globules": "DaG",
    "regression_structures": "RS",
}
_REG_IR = {"absent": "ABS", "regular": "REG", "irregular": "IR"}
GROUPS: dict[str, dict[str, str]] = {
    "pigment_network": {"absent": "ABS", "typical": "TYP", "atypical": "ATP"},
    "blue_whitish_veil": {"absent": "ABS", "present": "PRS"},
    "vascular_structures": {
        "absent": "ABS",
        **dict.fromkeys(("arborizing", "comma", "hairpin", "within regression", "wreath"), "REG"),
        **dict.fromkeys(("dotted", "linear irregular"), "IR"),
    },
    "pigmentation": {
        "absent": "ABS",
        **dict.fromkeys(("diffuse regular", "localized regular"), "REG"),
        **dict.fromkeys(("diffuse irregular", "localized irregular"), "IR"),
    },
    "streaks": _REG_IR,
    "dots_and_globules": _REG_IR,
    "regression_structures": {
        "absent": "ABS",
        **dict.fromkeys(("blue areas", "white areas", "combinations"), "PRS"),
    },
}
GROUP_ORDER = ("BCC", "NEV", "MEL", "MISC", "SK", "ABS", "TYP", "REG", "ATP", "IR", "PRS")
# The class each label reports (SM3 Table I) and the Table's column order.
REPORTED = {
    "blue_whitish_veil": "PRS",
    "dots_and_globules": "IR",
    "pigmentation": "IR",
    "pigment_network": "ATP",
    "regression_structures": "PRS",
    "streaks": "IR",
    "vascular_structures": "IR",
    "diagnosis": "MEL",
}
TABLE_ROWS = {
    "class_auc": "AUC",
    "sensitivity": "Sens.",
    "specificity": "Spec.",
    "precision": "Prec.",
}


def diagnosis_group(name: str) -> str:
    """Derm7pt's 5 grouped diagnoses: BCC, NEV (the nevi), MEL (the melanomas), SK, MISC."""
    low = name.lower()
    if "melanoma" in low:
        return "MEL"
    if "basal cell" in low:
        return "BCC"
    if "seborrheic" in low:
        return "SK"
    if "nevus" in low or "nevi" in low:
        return "NEV"
    return "MISC"


def group_targets(y: np.ndarray, classes: Sequence[str], mapping) -> tuple[np.ndarray, list[str]]:
    """Raw class indices (-1 = missing) -> grouped class indices and the group names.

    `mapping` is a dict raw value -> group or a function; values it does not know keep their
    name. Groups are ordered as GROUP_ORDER, unknown ones after, alphabetically.
    """
    if isinstance(mapping, dict):
        named = [mapping.get(c, c) for c in classes]
    else:
        named = [mapping(c) for c in classes]
    names = sorted(set(named), key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))
    code = np.array([names.index(g) for g in named] + [-1], dtype=np.int64)
    return code[np.where(y >= 0, y, len(named))], names


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
    split: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 20,
    knn_temperature: float = 0.07,
    C: float = DEFAULT_C,
    cv: bool = False,
    pseudo: str | None = None,
    test_size: float = 0.1,
    device: str = "auto",
    split_file: str | os.PathLike | None = None,
) -> dict:
    """Probe the seven criteria; returns the `probe --json` format with a `target` per result
    (the criterion, or "mean" for the average over the labels of each metric's mean).
    `split` "official" (or `split_file`, a CSV of id, split): the dataset's fixed split, as in
    `probe.run_probe`."""
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
        split_info = SplitInfo.of(
            store, np.arange(store.n), split_file=split_file, warnings=warnings
        )
        label_all, label_classes = store.label, list(store.classes)
    split = split_info.choose(split)
    x_raw, columns, _ = raw
    x_lin = np.concatenate([blocks[n] for n in names], axis=1)
    x_knn = np.concatenate([normalize(blocks[n]) for n in names], axis=1)

    targets = {DIAGNOSIS: group_targets(label_all, label_classes, diagnosis_group)}
    for criterion in CRITERIA:
        y_raw, raw_classes = criterion_targets(x_raw, columns, criterion)
        targets[criterion] = group_targets(y_raw, raw_classes, GROUPS[criterion])

    results, per_method = [], {m: [] for m in methods}
    for target, (y_all, classes) in targets.items():
        rows = np.flatnonzero(y_all >= 0)
        present = np.unique(y_all[rows])
        if len(present) < 2:
            warnings.add(f"{target}: a single value among annotated rows; skipped")
            continue
        y = np.searchsorted(present, y_all[rows])
        class_names = [classes[c] for c in present]
        reported = REPORTED[target] if REPORTED[target] in class_names else None
        if reported is None:
            warnings.add(
                f"{target}: no row has the reported class {REPORTED[target]}; its per-class "
                "metrics are n/a"
            )
        runs = {m: [] for m in methods}
        rows_info = split_info.subset(rows)
        for seed in seeds:
            train, test = rows_info.split(
                split, y, groups[rows], seed=int(seed), test_size=test_size, warnings=warnings
            )
            split_info.seen = max(split_info.seen, rows_info.seen)
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
                metrics = classification_metrics(
                    y[test], proba, task="multiclass", class_names=class_names, warnings=warnings
                )
                if reported is None:
                    metrics.update(dict.fromkeys(TABLE_ROWS, math.nan))
                else:
                    metrics.update(class_metrics(y[test], proba, class_names.index(reported)))
                runs[method].append(metrics)
        for method in methods:
            summary = summarize(runs[method])
            per_method[method].append(summary)
            result = _result(method, target, class_names, summary, names, split, seeds, pseudo)
            result["label_name"], result["reported_class"] = SHORT[target], reported
            results.append(result)
    for method in methods:
        if per_method[method]:
            keys = per_method[method][0].keys()
            mean = {
                key: {"mean": _nanmean([s[key]["mean"] for s in per_method[method]]), "std": None}
                for key in keys
            }
            results.append(_result(method, "mean", None, mean, names, split, seeds, pseudo))
    if not results:
        raise SlimpError(f"{store_path}: no label has two annotated values")
    return json_safe(
        {
            "task": "derm7pt-multilabel",
            "results": results,
            "split": split_info.describe(split),
            "table": table_i(results, methods),
            "warnings": list(warnings),
        }
    )


def table_i(results: list[dict], methods: Sequence[str]) -> dict:
    """The SM3 paper's Table I layout per method: columns BWV ... VS, DIAG, AVG (each with its
    reported class), rows AUC, Sens., Spec., Prec. (means over seeds; AVG = mean of the columns
    that have a value; null where undefined)."""
    order = [t for t in REPORTED]  # BWV, DaG, PIG, PN, RS, STR, VS, DIAG
    out = {}
    for method in methods:
        by_target = {r["target"]: r for r in results if r["method"] == method}
        rows = {}
        for key, row in TABLE_ROWS.items():
            values = [
                by_target[t]["metrics"][key]["mean"] if t in by_target else None for t in order
            ]
            rows[row] = values + [_nanmean(values)]
        out[method] = {
            "columns": [SHORT[t] for t in order] + ["AVG"],
            "classes": [REPORTED[t] for t in order] + [""],
            **rows,
        }
    return out


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
