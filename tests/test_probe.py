"""kNN against a brute-force reference; probe, baselines and leakage audit on synthetic stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval import WarningLog
from slimp_cli.eval.probe import run_probe


def synthetic(
    write_store,
    tmp_path: Path,
    *,
    n=600,
    d=8,
    random_labels=False,
    leak=False,
    seed=0,
    multiclass=False,
) -> Path:
    """Nested-like store: label is a linear function of the image + lesion features."""
    rng = np.random.default_rng(seed)
    image, lesion = (
        rng.normal(size=(n, d)).astype(np.float32),
        rng.normal(size=(n, d)).astype(np.float32),
    )
    pid = np.arange(n) // 3
    patient = rng.normal(size=(n // 3 + 1, d)).astype(np.float32)[pid]
    score = image @ rng.normal(size=d) + lesion @ rng.normal(size=d)
    if multiclass:
        label = np.digitize(score, np.quantile(score, [0.33, 0.66]))
    else:
        label = (score > np.median(score)).astype(np.int64)
    if random_labels:
        label = rng.integers(0, 2, n)
    noise = rng.normal(size=(n, 2)).astype(np.float32)
    raw_cols = np.column_stack([noise, label.astype(np.float32)]) if leak else noise
    names = ["age", "site"] + (["biopsed"] if leak else [])
    return write_store(
        tmp_path / f"s{seed}{int(leak)}.h5",
        features={"image": image, "lesion": lesion, "patient": patient},
        patient_id=pid,
        label=label,
        malignant=(label > 0).astype(np.int8),
        raw={"lesion": (raw_cols, names, names)},
    )


def _metric(report, method, name="accuracy", low_shot=None):
    (r,) = [r for r in report["results"] if r["method"] == method and r["low_shot"] == low_shot]
    return r["metrics"][name]["mean"]


def test_linear_label_is_learned(write_store, tmp_path):
    report = run_probe(synthetic(write_store, tmp_path), seeds=[0, 1], device="cpu")
    assert _metric(report, "linear") >= 0.95
    assert _metric(report, "linear", "auc") >= 0.98
    assert _metric(report, "knn") >= 0.7  # cosine kNN on a linear rule: well above chance
    r = report["results"][0]
    assert (
        r["features"] == ["image", "lesion", "patient"]
        and r["seeds"] == [0, 1]
        and r["split"] == "random"
    )
    assert set(r["metrics"]) >= {"accuracy", "balanced_accuracy", "f1", "auc"}
    assert set(r["metrics"]["accuracy"]) == {"mean", "std"}


def test_random_labels_are_chance(write_store, tmp_path):
    report = run_probe(
        synthetic(write_store, tmp_path, random_labels=True), seeds=[0, 1, 2], device="cpu"
    )
    for method in ("linear", "knn"):
        assert 0.3 <= _metric(report, method) <= 0.7
        assert 0.3 <= _metric(report, method, "auc") <= 0.7


def test_features_subset_and_multiclass(write_store, tmp_path):
    store = synthetic(write_store, tmp_path, multiclass=True)
    report = run_probe(
        store, label="multiclass", features=["image"], methods=["linear"], seeds=[0], device="cpu"
    )
    (r,) = report["results"]
    assert r["features"] == ["image"] and r["label"] == "multiclass"
    assert set(r["metrics"]) >= {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auc"}
    full = run_probe(store, label="multiclass", methods=["linear"], seeds=[0], device="cpu")
    assert (
        _metric(full, "linear") > r["metrics"]["accuracy"]["mean"]
    )  # lesion features carry label signal


def test_low_shot_and_patient_split(write_store, tmp_path):
    report = run_probe(
        synthetic(write_store, tmp_path),
        split="patient",
        seeds=[0],
        low_shot_fractions=[0.05],
        k=5,
        device="cpu",
    )
    assert {(r["method"], r["low_shot"]) for r in report["results"]} == {
        ("linear", None),
        ("knn", None),
        ("linear", 0.05),
        ("knn", 0.05),
    }
    assert all(r["split"] == "patient" for r in report["results"])
    with pytest.raises(SlimpError, match="--low-shot"):
        run_probe(synthetic(write_store, tmp_path, seed=1), low_shot_fractions=[1.5])


def test_cv_chooses_c(write_store, tmp_path):
    report = run_probe(
        synthetic(write_store, tmp_path, n=300), methods=["linear"], seeds=[0], cv=True
    )
    assert report["results"][0]["params"]["C"] == "cv"
    assert _metric(report, "linear") >= 0.85


def test_baseline_leakage_audit(write_store, tmp_path):
    leaky = run_probe(
        synthetic(write_store, tmp_path, leak=True), baseline=True, methods=["linear"], seeds=[0]
    )
    assert any("leakage: raw column 'biopsed' alone reaches AUC" in w for w in leaky["warnings"])
    assert _metric(leaky, "baseline-gbm") >= 0.95
    clean = run_probe(
        synthetic(write_store, tmp_path, leak=False), baseline=True, methods=["linear"], seeds=[0]
    )
    assert not any(w.startswith("leakage") for w in clean["warnings"])
    methods = [r["method"] for r in clean["results"]]
    assert methods == ["linear", "baseline-logreg", "baseline-gbm"]
    assert 0.3 <= _metric(clean, "baseline-logreg") <= 0.75  # raw columns are noise here


def test_bad_inputs(write_store, tmp_path):
    store = synthetic(write_store, tmp_path)
    with pytest.raises(SlimpError, match="has no features/x|unknown level"):
        run_probe(store, features=["x"])
    rng = np.random.default_rng(0)
    img_only = write_store(
        tmp_path / "img.h5",
        features={"image": rng.normal(size=(40, 3)).astype(np.float32)},
        patient_id=np.arange(40),
        label=np.zeros(40, int),
        malignant=np.zeros(40, np.int8),
    )
    with pytest.raises(SlimpError, match="no features/patient"):
        run_probe(img_only, features=["image", "patient"])
    with pytest.raises(SlimpError, match="single class"):
        run_probe(img_only)
    with pytest.raises(SlimpError, match="no pseudo/ilp"):
        run_probe(img_only, pseudo="ilp")


def test_unknown_malignancy_dropped_and_plots(write_store, tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=(n, 4)).astype(np.float32)
    mal = (x[:, 0] > 0).astype(np.int8)
    mal[:20] = -1
    store = write_store(
        tmp_path / "m.h5",
        features={"image": x},
        patient_id=np.arange(n),
        label=rng.integers(0, 3, n),
        malignant=mal,
    )
    report = run_probe(store, seeds=[0], k=50, plots_dir=tmp_path / "plots", device="cpu")
    assert any("20 of 200 rows have unknown malignancy" in w for w in report["warnings"])
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == [
        "confusion-knn.png",
        "confusion-linear.png",
        "reliability-knn.png",
        "reliability-linear.png",
        "roc-all.png",
        "roc-knn.png",
        "roc-linear.png",
        "tsne.png",
    ]
    mc = run_probe(
        store,
        label="multiclass",
        methods=["knn"],
        seeds=[0],
        plots_dir=tmp_path / "mc",
        device="cpu",
    )
    assert (tmp_path / "mc" / "roc-knn.png").stat().st_size > 1000 and mc["results"]


def test_class_in_one_patient_never_crashes(write_store, tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    pid = np.arange(n) // 3
    mal = (pid == 0).astype(np.int8)  # every malignant lesion belongs to patient 0
    store = write_store(
        tmp_path / "one.h5",
        features={"image": rng.normal(size=(n, 4)).astype(np.float32)},
        patient_id=pid,
        label=mal.astype(int),
        malignant=mal,
    )
    report = run_probe(store, split="patient", seeds=[0, 1, 2, 3], k=5, device="cpu")
    assert any("absent from the" in w for w in report["warnings"])
    assert len(report["results"]) == 2


def test_single_class_training_part(write_store, tmp_path, monkeypatch):
    import slimp_cli.eval.probe as probe
    import slimp_cli.eval.splits as splits

    store = synthetic(write_store, tmp_path, n=90)
    # a split whose training side holds class 0 only (as a patient split can on tiny data)
    monkeypatch.setattr(
        splits,
        "make_split",
        lambda kind, y, groups, **kw: (np.flatnonzero(y == 0), np.arange(len(y))),
    )
    report = probe.run_probe(store, seeds=[0], baseline=True, device="cpu")
    assert any("single class; linear predicts it" in w for w in report["warnings"])
    assert _metric(report, "linear", "balanced_accuracy") == pytest.approx(0.5)


def test_label_fixing_value_is_flagged_but_not_a_mixed_one():
    """A one-sided leak (value -> always one class, like PAD's biopsed=False) is caught even
    though its AUC is below the threshold; an independent indicator is not."""
    from slimp_cli.eval.baseline import label_fixing_values, leakage_audit

    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.4).astype(int)
    leak = np.where(y == 1, 0.0, (rng.random(n) < 0.6).astype(float))  # 1 -> always benign
    noise = (rng.random(n) < 0.5).astype(float)
    x = np.stack([leak, noise], axis=1)
    found = label_fixing_values(x, ["biopsed=false", "coin=heads"], y)
    assert [(c, k) for c, _, k in found] == [("biopsed=false", 0)]
    assert found[0][1] == int(leak.sum())
    warnings = WarningLog()
    aucs = leakage_audit(
        x,
        ["biopsed", "coin"],
        y,
        columns=["biopsed=false", "coin=heads"],
        class_names=["benign", "malignant"],
        warnings=warnings,
    )
    assert aucs["biopsed"] < 0.95
    assert len(warnings) == 1 and "'biopsed'" in warnings[0] and "'benign'" in warnings[0]


def test_columns_missing_together_give_one_missingness_warning():
    from slimp_cli.eval.baseline import leakage_audit

    rng = np.random.default_rng(1)
    n = 300
    y = (rng.random(n) < 0.5).astype(int)
    missing = np.where(y == 0, (rng.random(n) < 0.7), False).astype(float)  # only benign rows
    x = np.stack([missing, missing, rng.normal(size=n)], axis=1)
    warnings = WarningLog()
    leakage_audit(
        x,
        ["age", "smoke", "diam"],
        y,
        columns=["age=missing", "smoke=missing", "diam"],
        class_names=["benign", "malignant"],
        warnings=warnings,
    )
    assert len(warnings) == 1
    assert "'age', 'smoke' are missing" in warnings[0] and "'benign'" in warnings[0]


def test_roc_overlay_puts_every_method_with_its_auc_and_n_on_one_plot(tmp_path):
    """The SLIMP-vs-metadata overlay: one curve per method on the same rows, the legend's AUC
    is sklearn's, the title gives n and the positives; a method whose rows have one class has
    no curve."""
    from sklearn.metrics import roc_auc_score

    from slimp_cli.eval import plots

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    good = np.clip(y * 0.6 + rng.random(80) * 0.5, 0, 1)
    weak = rng.random(80)
    curves = {
        "linear": (y, np.stack([1 - good, good], 1)),
        "baseline-logreg": (y, np.stack([1 - weak, weak], 1)),
        "one-class": (np.zeros(80, int), np.stack([1 - weak, weak], 1)),
    }
    labels = plots.roc_overlay(
        tmp_path / "roc.png", curves, positive="malignant vs benign", title="test"
    )
    assert labels == [
        f"linear (AUC {roc_auc_score(y, good):.3f})",
        f"baseline-logreg (AUC {roc_auc_score(y, weak):.3f})",
    ]
    assert (tmp_path / "roc.png").stat().st_size > 1000
