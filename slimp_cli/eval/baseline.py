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
AUC >= 0.95 alone is almost certainly a label leak (PAD-UFES-20's `biopsed`).
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from slimp_cli.eval import WarningLog
from slimp_cli.eval.metrics import ovr_auc
from slimp_cli.store import RAW_LEVELS, FeatureStore

LEAK_AUC = 0.95
AUDIT_MAX_ROWS = 20000  # the audit is a screen, a stratified subsample is enough
BASELINES = ("baseline-logreg", "baseline-gbm")


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


def leakage_audit(
    x: np.ndarray,
    source_columns: list[str],
    y: np.ndarray,
    *,
    threshold: float = LEAK_AUC,
    seed: int = 0,
    warnings: WarningLog | None = None,
) -> dict[str, float]:
    """Cross-validated AUC of each source column alone for label y; warns at >= threshold.

    Shape: x [n, R], source_columns [R] (field of each column), y [n] ints -> {field: AUC}.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if len(y) > AUDIT_MAX_ROWS:
        keep = np.sort(rng.choice(len(y), AUDIT_MAX_ROWS, replace=False))
        x, y = x[keep], y[keep]
    classes, y = np.unique(y, return_inverse=True)
    n_folds = min(3, int(np.bincount(y).min()))
    if len(classes) < 2 or n_folds < 2:
        return {}
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    sources = np.asarray(source_columns)
    out: dict[str, float] = {}
    for field in dict.fromkeys(source_columns):  # first-seen order
        cols = x[:, sources == field]
        model = HistGradientBoostingClassifier(max_iter=30, random_state=seed)
        proba = cross_val_predict(model, cols, y, cv=cv, method="predict_proba")
        auc = ovr_auc(y, proba, labels=np.arange(len(classes)))
        out[field] = auc
        if auc >= threshold and warnings is not None:
            warnings.add(f"leakage: raw column '{field}' alone reaches AUC {auc:.2f} for the label")
    return out
