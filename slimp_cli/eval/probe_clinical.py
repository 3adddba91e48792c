"""The clinical half of `run_probe`: what each result and the report gain (issue 18).

`run_probe` creates a `ClinicalProbe` from the options, lets it read what it needs while the
store is open (`load`), hands it every split and prediction as they are made (`record_split`,
`record`), and asks it for the extra fields of each result (`result_fields`) and of the report
(`comparison`). Each result gains:
    metrics: + sensitivity, specificity, ap, pauc_80, sens_at_spec90/95, spec_at_sens90/95,
             ece, brier (the malignant task; eval/weighted.py)
    ci: {metric: [low, high]} (patient bootstrap; null with --bootstrap 0)
    n, n_positive, n_patients: of the test rows
    subgroups, subgroup_gaps: for the full-data results (eval/subgroups.py)
and the report a `comparison` (eval/compare.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..core.errors import SlimpError
from ..features.store import FeatureStore
from . import WarningLog
from .bootstrap import DEFAULT_RESAMPLES, PatientBootstrap, check_resamples
from .clinical import MalignantTask
from .compare import (
    DEFAULT_COMPARE,
    FeatureSet,
    default_pair,
    load_feature_set,
    paired_comparison,
)
from .confidence import ClinicalContext, Prediction, add_task_metrics
from .subgroups import RawColumns, choose_columns, subgroup_report

# fit(feature_set, x [n, D], seed, train rows, test rows) -> proba [len(test), C]
Fit = Callable[[FeatureSet, np.ndarray, int, np.ndarray, np.ndarray], np.ndarray]


class ClinicalProbe:
    """Options: bootstrap resamples (0 = off), compare (DEFAULT_COMPARE, None = off, or a
    pair of feature-set names), subgroups (None = the default columns, [] = off)."""

    def __init__(
        self,
        *,
        bootstrap: int = DEFAULT_RESAMPLES,
        compare: str | tuple[str, str] | None = DEFAULT_COMPARE,
        subgroups: Sequence[str] | None = None,
        seed: int = 0,
        warnings: WarningLog,
    ) -> None:
        self.n_resamples = check_resamples(bootstrap)
        self.seed = int(seed)
        self.warnings = warnings
        self.explicit = compare is not None and compare != DEFAULT_COMPARE
        if self.explicit:
            if isinstance(compare, str) or len(compare) != 2:
                raise SlimpError(f"--compare {compare!r}: give two feature sets, A and B")
            self.pair = tuple(FeatureSet.parse(c) for c in compare)  # syntax checked up front
        else:
            self.pair = None
        self.want_compare = compare is not None
        self.subgroup_columns = None if subgroups is None else list(subgroups)
        self.preds: dict[tuple, list[Prediction]] = {}
        self.splits: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.ctx: ClinicalContext | None = None

    # --- while the store is open --------------------------------------------------------------
    def load(
        self,
        store: FeatureStore,
        *,
        rows: np.ndarray,
        y: np.ndarray,
        patients: np.ndarray,
        label: str,
        class_names: Sequence[str],
        names: Sequence[str],
        pseudo: str | None,
    ) -> None:
        """Read the malignant task, subgroup columns and comparison features of `rows`."""
        self.rows, self.y, self.patients = rows, y, patients
        self.task = "binary" if label == "binary" else "multiclass"
        if label == "binary":
            self.malignant = MalignantTask.binary()
        else:
            try:
                self.malignant = MalignantTask.from_rows(
                    y, store.malignant[rows], list(class_names)
                )
            except SlimpError as e:
                self.malignant = None
                self.warnings.add(f"--label multiclass: {e}; the clinical metrics are left out")
        raw = None if self.subgroup_columns == [] else RawColumns.of(store)
        columns = choose_columns(
            raw, self.subgroup_columns, store_path=store.path, warnings=self.warnings
        )
        self.labels = {}
        for column in columns:
            try:
                self.labels[column] = raw.labels(column, rows)
            except SlimpError as e:
                if self.subgroup_columns is not None:
                    raise SlimpError(f"--subgroups {column}: {e}") from None
                self.warnings.add(f"subgroups: {e}; column skipped")
        pseudo_arrays = store.pseudo(pseudo) if pseudo else None
        if self.want_compare and self.pair is None:
            pair = default_pair(names, store)
            self.pair = None if pair is None else tuple(FeatureSet.parse(c) for c in pair)
        self.x_pair = (
            None
            if self.pair is None
            else [load_feature_set(store, fs, rows, pseudo=pseudo_arrays) for fs in self.pair]
        )

    # --- during the probe ---------------------------------------------------------------------
    def record_split(self, seed: int, train: np.ndarray, test: np.ndarray) -> None:
        self.splits.append((int(seed), train, test))

    def record(self, method: str, frac, seed: int, test: np.ndarray, proba: np.ndarray) -> None:
        self.preds.setdefault((method, frac), []).append(Prediction(int(seed), test, proba))

    def _context(self) -> ClinicalContext:
        if self.ctx is None:
            boot = None
            if self.n_resamples:
                tested = np.unique(np.concatenate([t for _, _, t in self.splits]))
                boot = PatientBootstrap(
                    patients=self.patients[tested], n_resamples=self.n_resamples, seed=self.seed
                )
            self.ctx = ClinicalContext(
                y=self.y,
                patients=self.patients,
                task=self.task,
                malignant=self.malignant,
                boot=boot,
                warnings=self.warnings,
            )
        return self.ctx

    # --- the report ---------------------------------------------------------------------------
    def result_fields(self, method: str, frac, runs: list[dict]) -> dict:
        """metrics (per seed, to summarise), ci, counts, subgroups of one result."""
        ctx = self._context()
        preds = self.preds[(method, frac)]
        out = {
            "runs": add_task_metrics(runs, ctx, preds),
            "ci": ctx.intervals(preds, f"{method}" + ("" if frac is None else f" {frac:g}")),
            **ctx.counts(preds[0].rows),
        }
        if frac is None and self.labels:
            out["subgroups"], out["subgroup_gaps"] = subgroup_report(ctx, preds, self.labels)
        return out

    def comparison(self, fit: Fit, reuse: dict[str, tuple]) -> dict | None:
        """The paired comparison (None when off or impossible). `reuse` {feature-set name:
        (method, frac)} names results whose predictions are the same fit (not refit)."""
        if self.pair is None:
            return None
        ctx = self._context()
        sides = []
        for fs, x in zip(self.pair, self.x_pair):
            key = reuse.get(fs.name)
            if key in self.preds:
                sides.append(self.preds[key])
                continue
            sides.append(
                [
                    Prediction(seed, test, fit(fs, x, seed, train, test))
                    for seed, train, test in self.splits
                ]
            )
        return paired_comparison(ctx, *self.pair, *sides)

    def plots(self, out, curves: dict, *, split: str, seed: int) -> None:
        """A reliability diagram of P(malignant) per method (first seed, all training rows)
        into `out`: reliability-<method>.png."""
        if self.malignant is None:
            return
        from . import plots  # matplotlib only when figures are asked for

        for method, (y_true, proba) in curves.items():
            plots.reliability(
                out / f"reliability-{method}.png",
                self.malignant.truth(y_true),
                self.malignant.score(proba),
                title=f"{method}, {split} split, seed {seed}",
            )
