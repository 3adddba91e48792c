"""Linear probe and kNN on a feature store (paper Sec. 3.3, 4.3, Tables 2, 6, 16, 18, 19).

`run_probe(store_path, ...)` returns the `probe --json` report of DESIGN.md::

    {"results": [{"method", "split", "features", "label", "low_shot", "seeds", "metrics":
                  {"accuracy": {"mean", "std"}, ...}, "pseudo", "params"}, ...],
     "warnings": [...]}

Protocol. For each seed: one split (random: stratified lesion-level 90/10; patient:
patient-disjoint ~90/10); for the full training part (low_shot null) and each low-shot fraction
(stratified subset of the training rows); each method is fit on the training rows and scored on
the held-out rows. Metrics are averaged over seeds (mean, population std).
- linear: StandardScaler + multinomial LogisticRegression (lbfgs, L2). Default C = 1.0
  (sklearn's default: weak regularisation on standardised features, close to the paper's plain
  cross-entropy probe); `cv=True` picks C from CV_CS by 5-fold (or fewer) stratified inner
  cross-validation on the training rows, scored by balanced accuracy.
  `classifier="linear"` (`--classifier linear`) fits the papers' probe instead: a torch linear
  layer, (B)CE + AdamW, SLIMP's 150 epochs or SM3's 50 (by the store's variant), on the
  training rows' standardised features (eval/linear.py); the baseline-logreg row then uses it
  too, on the raw metadata.
- knn: cosine kNN, k = 20, votes exp(sim / 0.07) (see eval/knn.py). Each feature level is L2
  normalised before concatenation so image, lesion and patient weigh equally in the cosine.
Features: any subset of image, lesion, patient (Table 6); with `pseudo="ilp"` (or il/ii) the
lesion and patient levels come from `pseudo/<strategy>/` written by `slimp extrapolate`.
"""

from __future__ import annotations

import os
import warnings as pywarnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..core.errors import SlimpError
from ..core.paths import json_safe
from ..features.store import BRANCH_LEVELS, LEVELS, PSEUDO_STRATEGIES, FeatureStore
from . import WarningLog
from .baseline import BASELINES, leakage_audit, make_baseline, openmp_threads_for, raw_metadata
from .bootstrap import DEFAULT_RESAMPLES
from .compare import DEFAULT_COMPARE, FeatureSet
from .knn import knn_proba
from .linear import LinearProbeConfig, linear_probe_proba, probe_config, recipe_for
from .metrics import classification_metrics, summarize
from .options import check_probe_options
from .probe_clinical import ClinicalProbe
from .search import normalize
from .splits import SplitInfo, check_fractions, low_shot

METHODS = ("linear", "knn")
CLASSIFIERS = ("logreg", "linear")  # of the "linear" method: scikit-learn's, or the papers'
LABELS = ("binary", "multiclass", "melanoma")
DEFAULT_C = 1.0
CV_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_ITER = 2000


def load_probe_data(
    store: FeatureStore,
    *,
    label: str,
    features: Sequence[str] | None,
    pseudo: str | None,
    warnings: WarningLog,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Feature blocks, labels and groups of the usable rows.

    Returns (blocks {level: [n, D]}, y [n] in 0..C-1, patient ids [n], class names [C],
    rows [n] (indices into the store)). The store's `split`, `lesion_id` etc. are indexed by
    `rows`.
    """
    if label not in LABELS:
        raise SlimpError(f"--label {label!r}: choose binary or multiclass")
    available = list(store.feature_names)
    pseudo_arrays: dict[str, np.ndarray] = {}
    if pseudo is not None:
        if pseudo not in PSEUDO_STRATEGIES:
            raise SlimpError(f"--pseudo {pseudo!r}: choose one of {', '.join(PSEUDO_STRATEGIES)}")
        pseudo_arrays = store.pseudo(pseudo)
        available = [
            k
            for k in LEVELS
            if (k == "image" and "image" in store.feature_names)
            or (k != "image" and k in pseudo_arrays)
        ]
    # SM3 stores: image = concat(derm, clinic) already, so the default leaves the branches out
    default = [k for k in available if k not in BRANCH_LEVELS] or available
    names = list(features) if features else default
    for name in names:
        if name not in LEVELS:
            raise SlimpError(f"--features: unknown level {name!r}; choose from {', '.join(LEVELS)}")
        if name not in available:
            where = f"pseudo/{pseudo}" if pseudo and name != "image" else "features"
            raise SlimpError(
                f"--features {name}: {store.path} has no {where}/{name} "
                f"(available: {', '.join(available) or 'none'})"
            )
    if not names:
        raise SlimpError(f"{store.path} holds no features to probe")
    names = list(dict.fromkeys(names))

    if label == "binary":
        y_all, class_names = store.malignant.astype(np.int64), ["benign", "malignant"]
        unknown_what = "unknown malignancy (malignant=-1)"
    elif label == "melanoma":  # melanoma vs every other diagnosis (SM3's DIAG MEL)
        melanoma = store.melanoma
        if melanoma is None:
            raise SlimpError(
                f"--label melanoma: {store.path}'s schema names no melanoma classes (add "
                "`melanoma` or `melanoma_contains` to the dataset schema and ingest again)"
            )
        y_all, class_names = melanoma.astype(np.int64), ["other", "melanoma"]
        unknown_what = "unknown label (label=-1)"
    else:
        y_all, class_names = store.label, list(store.classes)
        unknown_what = "unknown label (label=-1)"
    rows = np.flatnonzero(y_all >= 0)
    if len(rows) < len(y_all):
        warnings.add(f"{len(y_all) - len(rows)} of {len(y_all)} rows have {unknown_what}: dropped")
    if len(rows) == 0:
        raise SlimpError(f"--label {label}: no row of {store.path} has a known label")
    present = np.unique(y_all[rows])
    if len(present) < 2:
        raise SlimpError(
            f"--label {label}: {store.path} has a single class among labelled rows; nothing to classify"
        )
    if label == "multiclass":
        # keep only classes that occur, so no empty class distorts macro averages
        y = np.searchsorted(present, y_all[rows])
        class_names = [class_names[c] if c < len(class_names) else str(c) for c in present]
    else:
        y = y_all[rows]
    blocks = {}
    for name in names:
        data = pseudo_arrays[name] if (pseudo and name != "image") else store.block(name)
        blocks[name] = np.asarray(data, dtype=np.float32)[rows]
    return blocks, y, store.patient_id[rows], class_names, rows


def linear_proba(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    n_classes: int,
    C: float = DEFAULT_C,
    cv: bool = False,
    seed: int = 0,
    warnings: WarningLog | None = None,
) -> tuple[np.ndarray, float]:
    """Fit the linear probe, return (proba [m, n_classes], C used)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
    if cv:
        counts = np.bincount(y_train)
        folds = min(5, int(counts[counts > 0].min()))
        if folds >= 2:
            model = GridSearchCV(
                model,
                {"logisticregression__C": list(CV_CS)},
                scoring="balanced_accuracy",
                cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
            )
        elif warnings is not None:
            warnings.add(f"--cv: a class has fewer than 2 training samples; using C={C}")
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    if warnings is not None and any(issubclass(w.category, ConvergenceWarning) for w in caught):
        warnings.add(
            f"linear probe: lbfgs did not fully converge in {MAX_ITER} iterations (try --cv for stronger regularisation)"
        )
    used_c = model.best_params_["logisticregression__C"] if isinstance(model, GridSearchCV) else C
    return _full_proba(model.predict_proba(x_test), model.classes_, n_classes), float(used_c)


def _full_proba(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Spread a model's proba over all classes (a class absent from training gets 0)."""
    out = np.zeros((len(proba), n_classes))
    out[:, np.asarray(seen, dtype=int)] = proba
    return out


def run_probe(
    store_path: str | os.PathLike,
    *,
    label: str = "binary",
    features: Sequence[str] | None = None,
    methods: Sequence[str] = METHODS,
    split: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    low_shot_fractions: Sequence[float] = (),
    k: int = 20,
    knn_temperature: float = 0.07,
    C: float = DEFAULT_C,
    cv: bool = False,
    baseline: bool = False,
    pseudo: str | None = None,
    test_size: float = 0.1,
    device: str = "auto",
    plots_dir: str | os.PathLike | None = None,
    classifier: str = "logreg",
    probe_recipe: str | None = None,
    probe_epochs: int | None = None,
    probe_lr: float | None = None,
    probe_weight_decay: float | None = None,
    probe_batch_size: int | None = None,
    split_file: str | os.PathLike | None = None,
    bootstrap: int = DEFAULT_RESAMPLES,
    compare: str | tuple[str, str] | None = DEFAULT_COMPARE,
    subgroups: Sequence[str] | None = None,
) -> dict:
    """Evaluate a store; returns the `probe --json` dict (NaN metrics as None).

    `classifier` "logreg" (scikit-learn, `C` / `cv`) or "linear" (the papers' torch probe:
    `probe_recipe` "slimp" / "sm3", None = by the store's variant; the other `probe_*` replace
    the recipe's values; see eval/linear.py).

    `split` None = "holdout" when the store carries the run's held-out patients, else
    "random" (lesion-grouped). The JSON's "split" block names the split, its fingerprint and
    how many test rows pre-training saw. "official" trains on the train + valid cases of the
    dataset's fixed split (the store's `official_split`, or `split_file`: a CSV of id, split)
    and scores on its test cases. `label` "melanoma": melanoma vs every other diagnosis.
    Clinical evaluation (eval/probe_clinical.py): `bootstrap` patient-bootstrap resamples of
    every metric's 95% interval (0 = none); `compare` a pair of feature sets (A, B), None for
    no comparison, DEFAULT_COMPARE = the probed features vs baseline-logreg when the store
    has raw metadata; `subgroups` metadata columns (None = the default ones, [] = none).
    """
    warnings = WarningLog()
    clinical = ClinicalProbe(
        bootstrap=bootstrap,
        compare=compare,
        subgroups=subgroups,
        seed=int(seeds[0]) if len(seeds) else 0,
        warnings=warnings,
    )
    for m in methods:
        if m not in METHODS:
            raise SlimpError(f"--method {m!r}: choose from {', '.join(METHODS)}")
    if not methods and not baseline and not clinical.explicit:
        raise SlimpError("--method: nothing to evaluate")
    if k < 1:
        raise SlimpError(f"--k {k}: must be at least 1")
    if not seeds:
        raise SlimpError("--seeds: give at least one seed")
    check_probe_options(seeds=seeds, C=C, knn_temperature=knn_temperature)
    linear_options = {
        "epochs": probe_epochs,
        "lr": probe_lr,
        "weight_decay": probe_weight_decay,
        "batch_size": probe_batch_size,
    }
    _check_classifier(classifier, cv=cv, recipe=probe_recipe, options=linear_options)
    fractions: list[float | None] = [None, *check_fractions(low_shot_fractions)]
    with FeatureStore.open(store_path) as store:
        blocks, y, groups, class_names, rows = load_probe_data(
            store, label=label, features=features, pseudo=pseudo, warnings=warnings
        )
        raw = raw_metadata(store) if baseline else None
        split_info = SplitInfo.of(store, rows, split_file=split_file, warnings=warnings)
        recipe = probe_recipe or recipe_for(store.variant)
        clinical.load(
            store,
            rows=rows,
            y=y,
            patients=groups,
            label=label,
            class_names=class_names,
            names=list(blocks),
            pseudo=pseudo,
        )
    linear_config = probe_config(recipe, **linear_options) if classifier == "linear" else None
    split = split_info.choose(split)
    names = list(blocks)
    task = "multiclass" if label == "multiclass" else "binary"
    n_classes = len(class_names)
    # built only for the methods asked: at 400k lesions each copy is gigabytes
    x_linear = np.concatenate([blocks[n] for n in names], axis=1) if "linear" in methods else None
    x_knn = (
        np.concatenate([normalize(blocks[n]) for n in names], axis=1) if "knn" in methods else None
    )
    del blocks
    models = list(methods)
    x_raw = None
    if baseline:
        if raw is None:
            warnings.add(f"--baseline: {store_path} has no raw/ metadata; baselines skipped")
        else:
            x_raw = raw[0][rows]
            leakage_audit(
                x_raw,
                raw[2],
                y,
                columns=raw[1],
                class_names=class_names,
                seed=int(seeds[0]),
                warnings=warnings,
            )
            models += list(BASELINES)

    runs: dict[tuple[str, float | None], list[dict]] = {}
    used_c: list[float] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # first seed, full data: for plots
    for seed in seeds:
        train, test = split_info.split(
            split, y, groups, seed=int(seed), test_size=test_size, warnings=warnings
        )
        clinical.record_split(int(seed), train, test)
        for frac in fractions:
            tr = train if frac is None else low_shot(train, y, fraction=frac, seed=int(seed))
            for method in models:
                if len(np.unique(y[tr])) < 2:
                    # nothing to fit: a classifier would refuse; predict the one class seen
                    warnings.add(
                        f"seed {seed}: the training part holds a single class; {method} predicts it everywhere"
                    )
                    proba = np.zeros((len(test), n_classes))
                    proba[:, int(y[tr][0])] = 1.0
                elif method == "linear" and linear_config is not None:
                    proba = linear_probe_proba(
                        x_linear[tr],
                        y[tr],
                        x_linear[test],
                        n_classes=n_classes,
                        config=linear_config,
                        seed=int(seed),
                    )
                elif method == "linear":
                    proba, c = linear_proba(
                        x_linear[tr],
                        y[tr],
                        x_linear[test],
                        n_classes=n_classes,
                        C=C,
                        cv=cv,
                        seed=int(seed),
                        warnings=warnings,
                    )
                    used_c.append(c)
                elif method == "knn":
                    proba = knn_proba(
                        x_knn[tr],
                        y[tr],
                        x_knn[test],
                        n_classes=n_classes,
                        k=k,
                        knn_temperature=knn_temperature,
                        device=device,
                        warnings=warnings,
                    )
                else:
                    proba = _fit_baseline(
                        method,
                        x_raw,
                        y,
                        tr,
                        test,
                        n_classes=n_classes,
                        seed=int(seed),
                        C=C,
                        warnings=warnings,
                        linear_config=linear_config,
                    )
                runs.setdefault((method, frac), []).append(
                    classification_metrics(
                        y[test], proba, task=task, class_names=class_names, warnings=warnings
                    )
                )
                clinical.record(method, frac, int(seed), test, proba)
                if frac is None and seed == seeds[0]:
                    curves[method] = (y[test], proba)

    results = []
    for frac in fractions:
        for method in models:
            params = (
                {"C": "cv" if cv else C, "C_used": sorted(set(used_c))}
                if method == "linear"
                else {"k": k, "knn_temperature": knn_temperature, "weighting": "exp"}
                if method == "knn"
                else {}
            )
            if method in ("linear", "baseline-logreg"):
                params = _classifier_params(params, classifier, recipe, linear_config)
            extra = clinical.result_fields(method, frac, runs[(method, frac)])
            results.append(
                {
                    "method": method,
                    "split": split,
                    "features": ["raw"] if method in BASELINES else names,
                    "label": label,
                    "low_shot": frac,
                    "seeds": [int(s) for s in seeds],
                    "metrics": summarize(extra.pop("runs")),
                    "pseudo": None if method in BASELINES else pseudo,
                    "params": params,
                    **extra,
                }
            )
    comparison = clinical.comparison(
        lambda fs, x, seed, tr, test: _fit_feature_set(
            fs,
            x,
            y,
            tr,
            test,
            n_classes=n_classes,
            seed=seed,
            C=C,
            cv=cv,
            warnings=warnings,
            linear_config=linear_config,
        ),
        reuse={"+".join(names): ("linear", None), **{b: (b, None) for b in BASELINES}},
    )
    if plots_dir is not None:
        _plots(Path(plots_dir), curves, class_names=class_names, split=split, seed=int(seeds[0]))
        clinical.plots(Path(plots_dir), curves, split=split, seed=int(seeds[0]))
        from .tsne import write_tsne  # Fig. 6: t-SNE of the store's features

        write_tsne(store_path, plots_dir, pseudo=pseudo, seed=int(seeds[0]))
    report = {"results": results, "split": split_info.describe(split)}
    if comparison is not None:
        report["comparison"] = comparison
    report["warnings"] = list(warnings)
    return json_safe(report)


def _check_classifier(classifier: str, *, cv: bool, recipe: str | None, options: dict) -> None:
    """The options of one linear classifier refused with the other (they would do nothing)."""
    if classifier not in CLASSIFIERS:
        raise SlimpError(f"--classifier {classifier!r}: choose one of {', '.join(CLASSIFIERS)}")
    if classifier == "linear" and cv:
        raise SlimpError("--cv chooses C of --classifier logreg; the linear probe has no C")
    given = [f"--probe-{k.replace('_', '-')}" for k, v in options.items() if v is not None]
    if classifier == "logreg" and (given or recipe is not None):
        raise SlimpError(
            f"{', '.join(given or ['--probe-recipe'])}: options of --classifier linear "
            "(the default classifier is logreg)"
        )


def _classifier_params(
    params: dict, classifier: str, recipe: str, config: LinearProbeConfig | None
) -> dict:
    """The JSON params of a linear row: the classifier, and the torch probe's recipe."""
    if config is None:
        return {"classifier": classifier, **params}
    return {"classifier": classifier, "recipe": recipe, **config.to_dict(), "augmentation": "none"}


def _fit_baseline(
    method, x_raw, y, tr, test, *, n_classes, seed, C, warnings, linear_config=None
) -> np.ndarray:
    if method == "baseline-logreg" and linear_config is not None:
        # the papers' probe on the raw metadata: the baseline row matches the probe's classifier
        return linear_probe_proba(
            x_raw[tr], y[tr], x_raw[test], n_classes=n_classes, config=linear_config, seed=seed
        )
    model = make_baseline(method, seed=seed, C=C, max_iter=MAX_ITER)
    with pywarnings.catch_warnings(record=True) as caught, openmp_threads_for(len(tr)):
        pywarnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_raw[tr], y[tr])
        proba = model.predict_proba(x_raw[test])
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        warnings.add(f"{method}: did not fully converge in {MAX_ITER} iterations")
    return _full_proba(proba, model.classes_, n_classes)


def _plots(out: Path, curves: dict, *, class_names: list[str], split: str, seed: int) -> None:
    from . import plots  # matplotlib only when figures are asked for

    plots.ensure_dir(out)
    if len(class_names) == 2 and curves:  # every method on one plot, the same test rows
        plots.roc_overlay(
            out / "roc-all.png",
            curves,
            positive=f"{class_names[1]} vs {class_names[0]}",
            title=f"{split} split, seed {seed}",
        )
    for method, (y_true, proba) in curves.items():
        title = f"{method}, {split} split, seed {seed}"
        plots.roc_curves(
            out / f"roc-{method}.png", y_true, proba, class_names=class_names, title=title
        )
        plots.confusion(
            out / f"confusion-{method}.png",
            y_true,
            proba.argmax(1),
            class_names=class_names,
            title=title,
        )


def _fit_feature_set(
    fs: FeatureSet, x, y, tr, test, *, n_classes, seed, C, cv, warnings, linear_config=None
):
    """proba [len(test), n_classes] of one side of `--compare`: the linear probe on a level
    set (the probe's own classifier: logreg, or the papers' torch probe with `linear_config`),
    or a baseline on the raw metadata (`x`); the probe's single-class fallback."""
    if len(np.unique(y[tr])) < 2:
        proba = np.zeros((len(test), n_classes))
        proba[:, int(y[tr][0])] = 1.0
        return proba
    if fs.baseline is not None:
        return _fit_baseline(
            fs.baseline,
            x,
            y,
            tr,
            test,
            n_classes=n_classes,
            seed=seed,
            C=C,
            warnings=warnings,
            linear_config=linear_config,
        )
    if linear_config is not None:
        return linear_probe_proba(
            x[tr], y[tr], x[test], n_classes=n_classes, config=linear_config, seed=seed
        )
    proba, _ = linear_proba(
        x[tr], y[tr], x[test], n_classes=n_classes, C=C, cv=cv, seed=seed, warnings=warnings
    )
    return proba
