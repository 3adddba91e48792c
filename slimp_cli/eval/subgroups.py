"""Subgroups of the test rows by a metadata column: AUC, sensitivity and specificity per group
with patient-bootstrap intervals, and the gap between the best and the worst group.

Groups come from the store's encoded raw metadata (`raw/lesion`, `raw/patient`; the data's
own schema, see schema.encode_raw), decoded back to values:
- categorical and boolean columns: one group per value; "missing" for an empty cell, "other"
  for a value outside the schema's vocabulary;
- age (a column named age or age_approx): the bands < 40, 40-60 (both ends included) and > 60;
- other numerical columns: one group per value when they take at most MAX_VALUES values
  (PAD-UFES-20's Fitzpatrick type 1-6), else their quartiles; standardised values are mapped
  back with the schema's mean and std.
Default columns (`--subgroups` not given): Fitzpatrick skin type, sex, age band and body site,
each when the store's schema has a column of that role (DEFAULT_ROLES lists the names tried).

A group with fewer than MIN_POSITIVES malignant rows is flagged, not dropped: its numbers are
shown but say little. The best-worst gap of a metric is taken over the unflagged groups only
(null when fewer than two), with the paired bootstrap interval of that difference.
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Sequence

import numpy as np

from ..core.errors import SlimpError
from ..features.store import RAW_LEVELS, FeatureStore
from . import WarningLog
from .bootstrap import intervals, percentile_interval
from .clinical import MalignantTask, curve_metrics
from .confidence import ClinicalContext, Prediction
from .weighted import sensitivity_specificity

MIN_POSITIVES = 10
MAX_VALUES = 12
AGE_COLUMNS = ("age", "age_approx")
AGE_BANDS = ("<40", "40-60", ">60")
SUBGROUP_METRICS = ("auc", "sensitivity", "specificity")
# role -> column names tried in order (the built-in schemas' names for it)
DEFAULT_ROLES = {
    "skin type": ("fitzpatrick", "fitspatrick", "fitzpatrick_skin_type", "skin_type"),
    "sex": ("sex", "gender"),
    "age": AGE_COLUMNS,
    "body site": (
        "anatom_site_general",
        "anatom_site_general_challenge",
        "region",
        "localization",
        "location",
    ),
}


class RawColumns:
    """The store's raw metadata with what is needed to decode a source column.

    Shape: x [N, R] (all store rows), columns [R] encoded names, sources [R] source column of
    each; `specs` {source column: its schema feature (type, vocab, mean, std)}.
    """

    def __init__(self, x, columns, sources, specs) -> None:
        self.x, self.columns, self.sources, self.specs = x, list(columns), list(sources), specs

    @classmethod
    def of(cls, store: FeatureStore) -> RawColumns | None:
        blocks = [b for b in (store.raw(level) for level in RAW_LEVELS) if b is not None]
        if not blocks:
            return None
        schema = store.schema or {}
        specs = {}
        for key in ("patient_features", "lesion_features", "derived_patient_features"):
            for feature in schema.get(key) or []:
                if isinstance(feature, dict) and "name" in feature:
                    specs[feature["name"]] = feature
        return cls(
            np.concatenate([b[0] for b in blocks], axis=1),
            sum((b[1] for b in blocks), []),
            sum((b[2] for b in blocks), []),
            specs,
        )

    @property
    def names(self) -> list[str]:
        """The source columns, in store order."""
        return list(dict.fromkeys(self.sources))

    def labels(self, column: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(group label of each row [n] str, the groups in display order) of one column.

        SlimpError when the column cannot be decoded (a numerical one without its schema
        statistics)."""
        idx = [j for j, s in enumerate(self.sources) if s == column]
        names = [self.columns[j] for j in idx]
        x = self.x[:, idx][np.asarray(rows)]  # the column's few encoded columns first
        missing = (
            x[:, names.index(f"{column}=missing")] == 1.0
            if f"{column}=missing" in names
            else np.zeros(len(x), dtype=bool)
        )
        if column in names:  # numerical: standardised value + missing indicator
            spec = self.specs.get(column) or {}
            if not isinstance(spec.get("mean"), (int, float)) or not isinstance(
                spec.get("std"), (int, float)
            ):
                raise SlimpError(
                    f"metadata column '{column}' is numerical and the store's schema has no "
                    "mean/std to decode it"
                )
            value = x[:, names.index(column)].astype(np.float64)
            value = value * max(float(spec["std"]), 1e-6) + float(spec["mean"])
            # float32 storage: an age of 40 may come back as 39.9999999; no source value is
            # finer than 1e-4
            value = np.round(value, 4)
            out, order = _numeric_groups(column, value, ~missing)
        else:  # one-hot over the vocabulary (+ missing)
            values = [n[len(column) + 1 :] for n in names if n != f"{column}=missing"]
            onehot = x[:, [names.index(f"{column}={v}") for v in values]] == 1.0
            out = np.full(len(x), "other", dtype=object)
            hit = onehot.any(axis=1)
            out[hit] = np.asarray(values, dtype=object)[onehot[hit].argmax(axis=1)]
            order = [*values, "other"]
        out[missing] = "missing"
        present = set(out.tolist())
        return out, [g for g in [*order, "missing"] if g in present]


def _numeric_groups(column: str, value: np.ndarray, known: np.ndarray):
    out = np.full(len(value), "missing", dtype=object)
    v = value[known]
    if column in AGE_COLUMNS:
        band = np.where(v < 40, AGE_BANDS[0], np.where(v <= 60, AGE_BANDS[1], AGE_BANDS[2]))
        out[known] = band
        return out, list(AGE_BANDS)
    rounded = np.round(v, 6)
    distinct = np.unique(rounded)
    if len(distinct) <= MAX_VALUES:
        out[known] = [f"{r:g}" for r in rounded]
        return out, [f"{d:g}" for d in distinct]
    edges = np.quantile(v, [0.25, 0.5, 0.75])
    names = [
        f"<{edges[0]:.3g}",
        f"{edges[0]:.3g}-{edges[1]:.3g}",
        f"{edges[1]:.3g}-{edges[2]:.3g}",
        f">{edges[2]:.3g}",
    ]
    out[known] = np.asarray(names, dtype=object)[np.searchsorted(edges, v, side="left")]
    return out, names


def choose_columns(
    raw: RawColumns | None,
    requested: Sequence[str] | None,
    *,
    store_path,
    warnings: WarningLog,
) -> list[str]:
    """The columns to group by: `requested` (checked: SlimpError naming the columns the store
    has) or, when None, the DEFAULT_ROLES the store has."""
    if requested is not None:
        requested = list(dict.fromkeys(requested))
        if not requested:
            return []
        if raw is None:
            raise SlimpError(
                f"--subgroups {','.join(requested)}: {store_path} has no raw metadata (raw/) "
                "to group rows by"
            )
        unknown = [c for c in requested if c not in raw.names]
        if unknown:
            raise SlimpError(
                f"--subgroups {','.join(unknown)}: {store_path} has no metadata column "
                f"{', '.join(repr(c) for c in unknown)} (columns: {', '.join(raw.names)})"
            )
        return requested
    if raw is None:
        return []
    out = []
    for names in DEFAULT_ROLES.values():
        hit = next((n for n in names if n in raw.names), None)
        if hit is not None:
            out.append(hit)
    return out


def best_worst_gap(groups: list[dict], resamples: dict, metric: str) -> dict | None:
    """The gap of `metric` between the best and worst unflagged group of one column.

    `groups`: that column's subgroup objects; `resamples`: {group: {metric: [b]}} (may be
    empty: no interval). Returns {"metric", "best", "worst", "gap", "ci"} or None when fewer
    than two unflagged groups have the metric defined.
    """
    usable = [g for g in groups if not g["flagged"] and g.get(metric) is not None]
    if len(usable) < 2:
        return None
    best = max(usable, key=lambda g: g[metric])
    worst = min(usable, key=lambda g: g[metric])
    out = {
        "metric": metric,
        "best": best["group"],
        "worst": worst["group"],
        "gap": float(best[metric] - worst[metric]),
        "ci": None,
    }
    if resamples:
        diff = resamples[best["group"]][metric] - resamples[worst["group"]][metric]
        out["ci"] = percentile_interval(diff)
    return out


def subgroup_metrics(
    task: MalignantTask, y: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """SUBGROUP_METRICS of some rows: AUC of P(malignant), sensitivity and specificity of the
    classifier's decision. Shape: y [m] class ids, proba [m, C], weights [b, m] -> {k: [b]}."""
    truth = task.truth(y)
    out = {"auc": curve_metrics(truth, task.score(proba), weights, auc_only=True)["auc"]}
    out.update(sensitivity_specificity(truth, task.decision(proba), weights))
    return out


def subgroup_report(
    ctx: ClinicalContext,
    preds: Sequence[Prediction],
    labels: dict[str, tuple[np.ndarray, list[str]]],
) -> tuple[list[dict], list[dict]]:
    """(subgroups, gaps) of one probe result.

    `labels` {column: (group of each probe row [n], groups in order)} (RawColumns.labels).
    subgroups: [{"column", "group", "n", "n_positive", "n_patients", "flagged", "auc",
    "sensitivity", "specificity", "ci": {metric: [low, high]} | None}] (metrics averaged over
    seeds; counts of the first seed's test rows); gaps: [{"column", "metric", "best",
    "worst", "gap", "ci"}] for each column and metric with two unflagged groups.
    """
    task = ctx.malignant
    if task is None:
        return [], []

    def score(y, proba, w):
        return subgroup_metrics(task, y, proba, w)

    out, gaps = [], []
    tested = np.unique(np.concatenate([p.rows for p in preds]))
    for column, (group_of, order) in labels.items():
        groups, resamples = [], {}
        for group in order:
            keep = group_of == group
            if not keep[tested].any():
                continue  # no test row of this group
            per_seed = []
            for p in preds:
                sel = keep[p.rows]
                per_seed.append(score(ctx.y[p.rows[sel]], p.proba[sel], None))
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore", RuntimeWarning)  # NaN in every seed: null
                means = {k: float(np.nanmean([s[k][0] for s in per_seed])) for k in per_seed[0]}
            first = preds[0].rows[keep[preds[0].rows]]
            counts = ctx.counts(first)
            entry = {
                "column": column,
                "group": group,
                **counts,
                "flagged": counts["n_positive"] < MIN_POSITIVES,
                **{k: None if np.isnan(v) else v for k, v in means.items()},
                "ci": None,
            }
            if ctx.boot is not None:
                resamples[group] = ctx.seed_mean(preds, score, keep)
                entry["ci"] = intervals(resamples[group])
            groups.append(entry)
        out += groups
        for metric in SUBGROUP_METRICS:
            gap = best_worst_gap(groups, resamples, metric)
            if gap is not None:
                gaps.append({"column": column, **gap})
    return out, gaps
