"""A probe result's clinical metrics and their patient-bootstrap intervals, over its seeds.

`run_probe` hands each result's predictions (one `Prediction` per seed: the test rows and the
class probabilities) to a `ClinicalContext`, which adds
- per seed, the malignant task's metrics (eval/weighted.py TASK_METRICS: sensitivity,
  specificity, ap, pauc_80, sens/spec at 90/95%, ece, brier), averaged over seeds with the
  rest of the result's metrics;
- `ci`: for every metric, the 95% percentile interval of the *seed-averaged* metric over
  patient-bootstrap resamples (eval/bootstrap.py). Resample r draws the same patients for
  every seed, so under --split holdout (the same rows each seed) the interval is the
  resampling spread of the very number reported; with random or patient splits each seed's
  test rows are weighted by the same patient draws;
- `n`, `n_positive` (malignant rows) and `n_patients` of the first seed's test rows (every
  seed's under --split holdout).
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import WarningLog
from .bootstrap import PatientBootstrap, intervals, undefined_share
from .clinical import MalignantTask
from .weighted import TASK_METRICS, task_metrics, weighted_metrics

UNDEFINED_WARN_SHARE = 0.05  # warn when a metric is undefined in more resamples than this


@dataclass(frozen=True)
class Prediction:
    """One seed's predictions. Shape: rows [m] indices into the probe's rows, proba [m, C]."""

    seed: int
    rows: np.ndarray
    proba: np.ndarray


class ClinicalContext:
    """What every result of one probe shares: labels, patients, the malignant task, the
    bootstrap (None = --bootstrap 0) and the warning log.

    Shape: y [n] class ids of the probe's rows, patients [n] their patient ids.
    """

    def __init__(
        self,
        *,
        y: np.ndarray,
        patients: np.ndarray,
        task: str,
        malignant: MalignantTask | None,
        boot: PatientBootstrap | None,
        warnings: WarningLog,
    ) -> None:
        if task not in ("binary", "multiclass"):
            raise ValueError(f"unknown task {task!r}")
        if len(y) != len(patients):
            raise ValueError("y and patients must have one entry per row")
        self.y = np.asarray(y)
        self.patients = np.asarray(patients)
        self.task = task
        self.malignant = malignant
        self.boot = boot
        self.warnings = warnings

    def truth(self, rows: np.ndarray) -> np.ndarray | None:
        """Malignant (bool) of the rows; None when the malignant task is undefined."""
        return None if self.malignant is None else self.malignant.truth(self.y[rows])

    def counts(self, rows: np.ndarray) -> dict[str, int | None]:
        """{"n", "n_positive", "n_patients"} of some rows (indices into the probe's rows);
        n_positive (malignant rows) is None when the malignant task is undefined."""
        truth = self.truth(rows)
        return {
            "n": int(len(rows)),
            "n_positive": None if truth is None else int(np.sum(truth)),
            "n_patients": int(len(np.unique(self.patients[rows].astype(str)))),
        }

    def point(self, pred: Prediction) -> dict[str, float]:
        """The malignant task's metrics of one seed (empty when the task is undefined)."""
        if self.malignant is None:
            return {}
        values = task_metrics(self.y[pred.rows], pred.proba, self.malignant)
        undefined = [k for k, v in values.items() if np.isnan(v[0])]
        if undefined:
            truth = self.truth(pred.rows)
            why = (
                f"the test split holds only {'malignant' if truth.all() else 'benign'} rows"
                if len(truth) and (truth.all() or not truth.any())
                else "the test split lacks a class"
            )
            self.warnings.add(f"{why}: {', '.join(undefined)} undefined (reported as null)")
        return {k: float(v[0]) for k, v in values.items()}

    def seed_mean(
        self,
        preds: Sequence[Prediction],
        metrics: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]],
        keep: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """{metric: [B]} resample values of the seed-averaged metric.

        `metrics(y_rows, proba_rows, weights [c, m])` scores one seed's rows under a batch of
        resamples; `keep` [n] bool restricts every seed to some of the probe's rows (a
        subgroup). A seed with no row left contributes NaN.
        """
        per_seed: list[dict[str, np.ndarray]] = []
        for pred in preds:
            sel = np.ones(len(pred.rows), bool) if keep is None else keep[pred.rows]
            rows, proba = pred.rows[sel], pred.proba[sel]
            per_seed.append(
                self.boot.collect(
                    lambda w, rows=rows, proba=proba: metrics(self.y[rows], proba, w),
                    self.patients[rows],
                )
            )
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample: stays NaN
            return {k: np.nanmean([s[k] for s in per_seed], axis=0) for k in per_seed[0]}

    def intervals(self, preds: Sequence[Prediction], what: str) -> dict[str, list] | None:
        """`ci` of a result: every metric's interval (None with --bootstrap 0)."""
        if self.boot is None:
            return None
        resamples = self.seed_mean(
            preds,
            lambda y, proba, w: weighted_metrics(
                y, proba, task=self.task, malignant=self.malignant, weights=w
            ),
        )
        shaky = {k: v for k, v in undefined_share(resamples).items() if v > UNDEFINED_WARN_SHARE}
        if shaky:
            worst = max(shaky.values())
            self.warnings.add(
                f"bootstrap ({what}): {', '.join(shaky)} undefined in up to {worst:.0%} of "
                "resamples (a resample without one of the classes); their intervals are over "
                "the other resamples"
            )
        return intervals(resamples)


def add_task_metrics(runs: list[dict], ctx: ClinicalContext, preds: Sequence[Prediction]):
    """Each seed's metric dict (classification_metrics) with the task metrics added.
    `runs` and `preds` are in the same seed order. Returns new dicts."""
    return [{**run, **ctx.point(pred)} for run, pred in zip(runs, preds)]


__all__ = ["TASK_METRICS", "ClinicalContext", "Prediction", "add_task_metrics"]
