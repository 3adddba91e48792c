"""Paired comparison of two feature sets on the same held-out rows (`probe --compare A B`).

A feature set is either levels joined by "+" (image, lesion, patient, the SM3 branches, and
`raw`: the store's encoded raw metadata), fit with the probe's linear classifier, or a
metadata-only baseline (`baseline-logreg`, `baseline-gbm`). Both sides are fit on the same
training rows and scored on the same test rows for every seed; the comparison is of the
malignant task (eval/clinical.py): delta AUC, delta pAUC above 80% TPR and delta balanced
accuracy (A minus B, averaged over seeds) with paired patient-bootstrap intervals (the same
resampled patients score both sides), and DeLong's test for delta AUC on the first seed (the
split is fixed under --split holdout; DeLong treats rows as independent, see eval/delong.py).

By default (`DEFAULT_COMPARE`) the probe's features (the model's full features unless
--features says otherwise) are compared with the metadata-only logistic regression, when the
store has raw metadata: does the model add anything to what the metadata already says?
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import SlimpError
from ..features.store import BRANCH_LEVELS, LEVELS, RAW_LEVELS, FeatureStore
from .baseline import BASELINES, raw_metadata
from .bootstrap import intervals
from .clinical import MalignantTask, curve_metrics
from .confidence import ClinicalContext, Prediction
from .delong import delong_test
from .weighted import sensitivity_specificity

RAW = "raw"
DEFAULT_COMPARE = "default"
PAIRED_METRICS = ("auc", "pauc_80", "balanced_accuracy")


@dataclass(frozen=True)
class FeatureSet:
    """One side of a comparison: `levels` fit by the linear probe, or a `baseline`."""

    levels: tuple[str, ...] = ()
    baseline: str | None = None

    def __post_init__(self) -> None:
        if bool(self.levels) == bool(self.baseline):
            raise ValueError("a FeatureSet is either levels or a baseline")

    @classmethod
    def parse(cls, text: str) -> FeatureSet:
        """`image+lesion+patient`, `raw+image`, `baseline-logreg`... SlimpError otherwise."""
        text = str(text).strip()
        if text in BASELINES:
            return cls(baseline=text)
        words = [w.strip() for w in text.split("+")]
        bad = [w for w in words if w not in (*LEVELS, RAW)]
        if not text or bad:
            raise SlimpError(
                f"--compare {text!r}: not a feature set; give levels joined by + "
                f"({', '.join((*LEVELS, RAW))}; raw = the store's raw metadata) or one of "
                f"{', '.join(BASELINES)}"
            )
        return cls(levels=tuple(dict.fromkeys(words)))

    @property
    def name(self) -> str:
        return self.baseline or "+".join(self.levels)

    @property
    def classifier(self) -> str:
        return self.baseline or "linear"


def has_raw(store: FeatureStore) -> bool:
    """Whether the store holds raw metadata (without reading it)."""
    return any(f"raw/{level}" in store.f for level in RAW_LEVELS)


def available(store: FeatureStore, pseudo: dict[str, np.ndarray] | None) -> list[str]:
    """The words a feature set of this store may use."""
    if pseudo is None:
        levels = list(store.feature_names)
    else:
        levels = [
            k
            for k in LEVELS
            if (k == "image" and k in store.feature_names) or (k != "image" and k in pseudo)
        ]
    return levels + ([RAW, *BASELINES] if has_raw(store) else [])


def load_feature_set(
    store: FeatureStore,
    fs: FeatureSet,
    rows: np.ndarray,
    *,
    pseudo: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The [n, D] float32 matrix of a feature set on some store rows (a baseline's: the raw
    metadata). SlimpError naming what the store can compare when it lacks a part."""
    have = available(store, pseudo)
    missing = [w for w in (fs.levels or (fs.baseline,)) if w not in have]
    if missing:
        what = "raw metadata (raw/)" if set(missing) & {RAW, *BASELINES} else "features"
        raise SlimpError(
            f"--compare {fs.name}: {store.path} has no {', '.join(missing)} {what} "
            f"(it can compare: {', '.join(have) or 'nothing'})"
        )
    parts = []
    for word in fs.levels or (RAW,):
        if word == RAW:
            parts.append(np.asarray(raw_metadata(store)[0], dtype=np.float32)[rows])
        elif pseudo is not None and word != "image":
            parts.append(np.asarray(pseudo[word], dtype=np.float32)[rows])
        else:
            parts.append(np.asarray(store.block(word), dtype=np.float32)[rows])
    return np.concatenate(parts, axis=1)


def default_pair(names: Sequence[str], store: FeatureStore) -> tuple[str, str] | None:
    """The default comparison: the probed levels vs the metadata-only logistic regression, or
    None when the store has no raw metadata (or the probe's levels are SM3 branches only)."""
    if not has_raw(store):
        return None
    levels = [n for n in names if n not in BRANCH_LEVELS] or list(names)
    return "+".join(levels), "baseline-logreg"


def paired_metrics(
    task: MalignantTask, y: np.ndarray, proba_ab: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Both sides' PAIRED_METRICS and their differences under row weights.

    Shape: y [m] class ids, proba_ab [m, 2C] (A's C columns, then B's), weights [b, m] ->
    {"a_auc", ..., "b_auc", ..., "delta_auc", ...: [b]}.
    """
    c = proba_ab.shape[1] // 2
    truth = task.truth(y)
    out = {}
    for side, proba in (("a", proba_ab[:, :c]), ("b", proba_ab[:, c:])):
        curves = curve_metrics(truth, task.score(proba), weights)
        ss = sensitivity_specificity(truth, task.decision(proba), weights)
        out[f"{side}_auc"] = curves["auc"]
        out[f"{side}_pauc_80"] = curves["pauc_80"]
        out[f"{side}_balanced_accuracy"] = (ss["sensitivity"] + ss["specificity"]) / 2.0
    for m in PAIRED_METRICS:
        out[f"delta_{m}"] = out[f"a_{m}"] - out[f"b_{m}"]
    return out


def paired_comparison(
    ctx: ClinicalContext,
    a: FeatureSet,
    b: FeatureSet,
    preds_a: Sequence[Prediction],
    preds_b: Sequence[Prediction],
) -> dict | None:
    """The JSON `comparison` of two sides' predictions (same seeds, same test rows).

    Returns {"a", "b", "classifier", "task", "n", "n_positive", "n_patients", "seeds",
    "metrics": {"a": {...}, "b": {...}}, "delta_auc", "delta_pauc_80",
    "delta_balanced_accuracy", "ci": {delta: [low, high]} | None, "metrics_ci": {"a", "b"} |
    None, "p_delong", "delong": {...}}; None when the malignant task is undefined.
    """
    task = ctx.malignant
    if task is None:
        ctx.warnings.add("--compare: the malignant task is undefined for this label; skipped")
        return None
    joint = []
    for pa, pb in zip(preds_a, preds_b):
        if pa.seed != pb.seed or not np.array_equal(pa.rows, pb.rows):
            raise ValueError("paired_comparison: both sides must share seeds and test rows")
        joint.append(Prediction(pa.seed, pa.rows, np.hstack([pa.proba, pb.proba])))

    def score(y, proba_ab, w):
        return paired_metrics(task, y, proba_ab, w)

    per_seed = [score(ctx.y[p.rows], p.proba, None) for p in joint]
    mean = {k: float(np.mean([s[k][0] for s in per_seed])) for k in per_seed[0]}
    first = joint[0]
    truth = task.truth(ctx.y[first.rows])
    c = first.proba.shape[1] // 2
    test = delong_test(
        truth, task.score(first.proba[:, :c]), task.score(first.proba[:, c:])
    ).to_dict()
    out = {
        "a": a.name,
        "b": b.name,
        "classifier": {"a": a.classifier, "b": b.classifier},
        "task": "malignant",
        **ctx.counts(first.rows),
        "seeds": [p.seed for p in joint],
        "metrics": {
            side: {m: _num(mean[f"{side}_{m}"]) for m in PAIRED_METRICS} for side in ("a", "b")
        },
        **{f"delta_{m}": _num(mean[f"delta_{m}"]) for m in PAIRED_METRICS},
        "ci": None,
        "metrics_ci": None,
        "p_delong": _num(test["p"]),
        "delong": {"seed": first.seed, **{k: _num(v) for k, v in test.items() if k != "p"}},
    }
    if math.isnan(mean["delta_auc"]):
        ctx.warnings.add(
            "--compare: the test split holds a single class: delta_auc, delta_pauc_80 and "
            "p_delong undefined (reported as null)"
        )
    if ctx.boot is not None:
        ci = intervals(ctx.seed_mean(joint, score))
        out["ci"] = {f"delta_{m}": ci[f"delta_{m}"] for m in PAIRED_METRICS}
        out["metrics_ci"] = {
            side: {m: ci[f"{side}_{m}"] for m in PAIRED_METRICS} for side in ("a", "b")
        }
    return out


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
