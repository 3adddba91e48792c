"""Metadata-only baselines and the label-leakage audit (`slimp probe --baseline`).

Baselines see only the encoded raw metadata of the store (`raw/lesion` + `raw/patient`), never
the learned features: a logistic regression (standardised, same C as the probe) and gradient
boosting (HistGradientBoostingClassifier). They run on the probe's splits, seeds and low-shot
fractions, so their numbers sit next to the probe's.

Leakage audit: for every raw *source* column (all encoded columns of one field together: a
categorical one-hot group, or a number with its missing indicator), a small gradient-boosting
model is fit on that group alone and scored by 3-fold cross-validated ROC AUC for the label.
The group is judged as a whole because a many-valued categorical (a free-text diagnosis, say)
can determine the label while none of its one-hot columns does alone. A field reaching
AUC >= 0.95 alone is almost certainly a label leak.

A leak can also be one-sided: PAD-UFES-20's `biopsed` reaches only AUC 0.87 on the shared subset,
yet `biopsed=False` is benign on every one of its 243 rows (46% of the data), because only
suspicious lesions are biopsied. So the audit also flags a value (one-hot or missing-indicator
column) that fixes the label on a large group: at least 10% of the rows (and 20 rows), all of
one class, where chance alone would give a pure group with probability < 1e-6 (p_class ** m).
"""

from __future__ import annotations

import contextlib

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..features.store import RAW_LEVELS, FeatureStore
from . import WarningLog
from .metrics import ovr_auc

LEAK_AUC = 0.95
PURE_MIN_FRACTION = 0.10  # a value must cover this share of rows to be judged "label-fixing"
PURE_MIN_ROWS = 20
PURE_LOG_P = np.log(1e-6)  # chance of a pure group that large under independence
AUDIT_MAX_ROWS = 20000  # the audit is a screen, a stratified subsample is enough
BASELINES = ("baseline-logreg", "baseline-gbm")
SMALL_DATA_ROWS = 50_000


def openmp_threads_for(n_rows: int):
    """Context: one OpenMP thread for small fits.

    Gradient boosting on a few thousand rows gains nothing from threads, and OpenMP barriers
    spinning on busy cores (or next to torch's own OpenMP pool) made such fits 20x slower.
    """
    return (
        threadpool_limits(limits=1, user_api="openmp")
        if n_rows < SMALL_DATA_ROWS
        else contextlib.nullcontext()
    )


def raw_metadata(store: FeatureStore) -> tuple[np.ndarray, list[str], list[str]] | None:
    """Concatenated raw/lesion and raw/patient: (X [N, R], columns, source_columns), or None."""
    blocks = [b for b in (store.raw(level) for level in RAW_LEVELS) if b is not None]
    if not blocks:
        return None
    x = np.concatenate([b[0] for b in blocks], axis=1)
    return x, sum((b[1] for b in blocks), []), sum((b[2] for b in blocks), [])


def make_baseline(name: str, *, seed: int, C: float, max_iter: int = 2000):
    """A fresh unfitted baseline model."""
    if name == "baseline-logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    if name == "baseline-gbm":
        return HistGradientBoostingClassifier(random_state=seed)
    raise ValueError(f"unknown baseline {name!r}")


def label_fixing_values(
    x: np.ndarray, columns: list[str], y: np.ndarray
) -> list[tuple[str, int, int]]:
    """Indicator columns whose 1-rows all share one label, improbably for their size.

    Shape: x [n, R] (only 0/1 columns are judged), columns [R], y [n] ints.
    Returns [(column, n_rows, class index)].
    """
    n = len(y)
    prevalence = np.bincount(y) / n
    out = []
    for j, name in enumerate(columns):
        col = x[:, j]
        if not np.isin(col, (0.0, 1.0)).all():
            continue
        rows = col == 1.0
        m = int(rows.sum())
        if m < max(PURE_MIN_ROWS, PURE_MIN_FRACTION * n) or m == n:
            continue
        labels = np.unique(y[rows])
        if len(labels) == 1 and m * np.log(prevalence[labels[0]]) < PURE_LOG_P:
            out.append((name, m, int(labels[0])))
    return out


def _warn_label_fixing(x, columns, source_columns, y, classes, class_names, warnings) -> None:
    """One warning per group of label-fixing columns covering the same rows (PAD's patient
    fields are missing together on 38% of its rows, all benign: one finding, not eleven)."""
    groups: dict[tuple[bytes, int], list[str]] = {}
    for name, _m, k in label_fixing_values(x, columns, y):
        rows = np.packbits(x[:, columns.index(name)] == 1.0).tobytes()
        groups.setdefault((rows, k), []).append(name)
    for (_, k), names in groups.items():
        m = int((x[:, columns.index(names[0])] == 1.0).sum())
        cls = class_names[classes[k]] if class_names is not None else str(classes[k])
        fields = sorted({source_columns[columns.index(n)] for n in names})
        share = f"{m} rows ({100 * m / len(y):.0f}%)"
        if all(n.endswith("=missing") for n in names):
            warnings.add(
                f"leakage: when {', '.join(repr(f) for f in fields)} "
                f"{'is' if len(fields) == 1 else 'are'} missing ({share}) the label is always "
                f"'{cls}': missingness this tied to the label usually reflects how the data were "
                "collected (a site or phase with one class)"
            )
        else:
            warnings.add(
                f"leakage: raw column {', '.join(repr(f) for f in fields)} — every one of the {share} "
                f"with {' / '.join(names)} is '{cls}'; a value that fixes the label is usually "
                "recorded after diagnosis"
            )


def leakage_audit(
    x: np.ndarray,
    source_columns: list[str],
    y: np.ndarray,
    *,
    columns: list[str] | None = None,
    class_names: list[str] | None = None,
    threshold: float = LEAK_AUC,
    seed: int = 0,
    warnings: WarningLog | None = None,
) -> dict[str, float]:
    """Cross-validated AUC of each source column alone for label y; warns at >= threshold,
    and (given `columns`) warns about values that fix the label (`label_fixing_values`).

    Shape: x [n, R], source_columns [R] (field of each column), y [n] ints -> {field: AUC}.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if len(y) > AUDIT_MAX_ROWS:
        keep = np.sort(rng.choice(len(y), AUDIT_MAX_ROWS, replace=False))
        x, y = x[keep], y[keep]
    classes, y = np.unique(y, return_inverse=True)
    if columns is not None and warnings is not None and len(classes) >= 2:
        _warn_label_fixing(x, columns, source_columns, y, classes, class_names, warnings)
    n_folds = min(3, int(np.bincount(y).min()))
    if len(classes) < 2 or n_folds < 2:
        return {}
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    sources = np.asarray(source_columns)
    out: dict[str, float] = {}
    for field in dict.fromkeys(source_columns):  # first-seen order
        cols = x[:, sources == field]
        model = HistGradientBoostingClassifier(max_iter=30, random_state=seed)
        with openmp_threads_for(len(y)):
            proba = cross_val_predict(model, cols, y, cv=cv, method="predict_proba")
        auc = ovr_auc(y, proba, labels=np.arange(len(classes)))
        out[field] = auc
        if auc >= threshold and warnings is not None:
            warnings.add(f"leakage: raw column '{field}' alone reaches AUC {auc:.2f} for the label")
    return out
