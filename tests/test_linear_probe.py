"""The papers' linear probe (eval/linear.py, `probe --classifier linear`): against scikit-learn's
logistic regression, known answers, determinism, and the CLI contract of its options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval.linear import (
    RECIPES,
    LinearProbeConfig,
    fit_linear_probe,
    linear_probe_proba,
    probe_config,
)
from slimp_cli.eval.probe import run_probe

# enough steps for the probe to converge on a few hundred rows (the papers' recipes count
# epochs, so small sets take few steps; these tests compare optima, not recipes)
CONVERGED = LinearProbeConfig(epochs=200, lr=1e-2, weight_decay=0.0, batch_size=128)


def _blobs(rng, *, n, d, classes, separation, offset=5.0):
    """Gaussian classes (unit noise) centred `separation` apart on orthogonal axes; unequal
    feature scales and a common offset (the probe must standardise). -> x [n, d], y [n]."""
    means = np.eye(classes, d) * separation / np.sqrt(2)
    y = np.arange(n) % classes
    scale = rng.uniform(0.3, 30.0, d)
    return (means[y] + rng.normal(size=(n, d))) * scale + offset, y


def _sklearn(x_train, y_train, x_test):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=5000))
    return model.fit(x_train, y_train).predict_proba(x_test)


@pytest.mark.parametrize("classes", [2, 3])
def test_separable_data_same_predictions_as_sklearn(classes, one_torch_thread):
    rng = np.random.default_rng(classes)
    x, y = _blobs(rng, n=600, d=5, classes=classes, separation=8.0)
    tr, te = np.arange(400), np.arange(400, 600)
    ours = linear_probe_proba(x[tr], y[tr], x[te], n_classes=classes, config=CONVERGED, seed=0)
    ref = _sklearn(x[tr], y[tr], x[te])
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))
    assert (ours.argmax(1) == y[te]).mean() == 1.0  # separable: the classes are found
    np.testing.assert_allclose(ours.sum(1), 1.0, rtol=1e-9)


def test_overlapping_classes_near_sklearn(one_torch_thread):
    """Not separable: both fit the same convex objective (no penalty), so their probabilities,
    accuracy and AUC agree closely."""
    rng = np.random.default_rng(7)
    x, y = _blobs(rng, n=1000, d=4, classes=2, separation=1.5)
    tr, te = np.arange(700), np.arange(700, 1000)
    ours = linear_probe_proba(x[tr], y[tr], x[te], n_classes=2, config=CONVERGED, seed=0)
    ref = _sklearn(x[tr], y[tr], x[te])
    acc_ref = (ref.argmax(1) == y[te]).mean()
    assert 0.65 < acc_ref < 0.9  # a case where the classifier matters
    assert (ours.argmax(1) == y[te]).mean() == pytest.approx(acc_ref, abs=0.01)
    assert roc_auc_score(y[te], ours[:, 1]) == pytest.approx(
        roc_auc_score(y[te], ref[:, 1]), abs=0.005
    )
    np.testing.assert_allclose(ours, ref, atol=0.03)


def test_known_answer_no_signal_gives_the_class_frequencies(one_torch_thread):
    """Constant features: only the bias can learn, and the (B)CE optimum is the class prior."""
    x = np.full((40, 3), 2.5)
    config = LinearProbeConfig(epochs=600, lr=0.01, weight_decay=0.01, batch_size=40)
    binary = np.array([0] * 30 + [1] * 10)
    proba = linear_probe_proba(x, binary, x[:1], n_classes=2, config=config)
    np.testing.assert_allclose(proba[0], [0.75, 0.25], atol=0.005)
    three = np.array([0] * 20 + [1] * 5 + [3] * 15)  # class 2 never seen: probability 0
    proba = linear_probe_proba(x, three, x[:1], n_classes=4, config=config)
    np.testing.assert_allclose(proba[0], [0.5, 0.125, 0.0, 0.375], atol=0.005)


def test_known_answer_symmetric_data_boundary_at_zero(one_torch_thread):
    """x and -x with opposite labels, full batch: by symmetry the bias gradient is 0 (up to
    float rounding, which Adam's normalised step turns into a walk of a few lr), so the
    boundary sits at x = 0 (p = 1/2 there) and the sign of x decides."""
    t = np.linspace(0.1, 2.0, 20)
    x = np.concatenate([t, -t])[:, None]
    y = np.array([1] * 20 + [0] * 20)
    config = LinearProbeConfig(epochs=200, lr=0.05, weight_decay=0.0, batch_size=40)
    probe = fit_linear_probe(x, y, n_classes=2, config=config)
    assert probe.weight[0, 0] > 3.0  # separable: the weight keeps growing
    assert abs(probe.bias[0]) < 0.01 * probe.weight[0, 0]  # boundary within 0.01 std of 0
    grid = np.array([[-1.0], [-0.1], [0.0], [0.1], [1.0]])
    p = probe.predict_proba(grid)[:, 1]
    assert p[2] == pytest.approx(0.5, abs=0.01)
    assert np.all(np.diff(p) > 0) and p[0] < 0.05 and p[4] > 0.95


def test_standardised_on_training_rows_only():
    """Standardisation is fit on the training rows: a test row's probability does not depend
    on the other test rows, nor on the features' units."""
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, n=200, d=3, classes=2, separation=3.0)
    config = LinearProbeConfig(epochs=20, lr=1e-2, weight_decay=0.01, batch_size=32)
    tr, te = np.arange(150), np.arange(150, 200)
    all_test = linear_probe_proba(x[tr], y[tr], x[te], n_classes=2, config=config)
    one = linear_probe_proba(x[tr], y[tr], x[te][:1] * 1.0, n_classes=2, config=config)
    np.testing.assert_allclose(one[0], all_test[0], rtol=1e-6)
    scaled = linear_probe_proba(
        x[tr] * 1e4 - 3e5, y[tr], x[te] * 1e4 - 3e5, n_classes=2, config=config
    )
    np.testing.assert_allclose(scaled, all_test, atol=1e-4)


def test_seeded_and_deterministic():
    import torch

    rng = np.random.default_rng(1)
    x, y = _blobs(rng, n=300, d=6, classes=3, separation=2.0)
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    a = linear_probe_proba(x, y, x, n_classes=3, config=RECIPES["sm3"], seed=4)
    b = linear_probe_proba(x, y, x, n_classes=3, config=RECIPES["sm3"], seed=4)
    c = linear_probe_proba(x, y, x, n_classes=3, config=RECIPES["sm3"], seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # the seed sets the batch order
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG untouched
    assert torch.get_num_threads() == threads


def test_recipes_and_config_checks():
    assert (RECIPES["slimp"].epochs, RECIPES["sm3"].epochs) == (150, 50)
    assert RECIPES["sm3"].to_dict() == {
        "epochs": 50,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "batch_size": 128,
    }
    assert probe_config("sm3", lr=0.1).lr == 0.1 and probe_config("sm3", lr=0.1).epochs == 50
    for bad, match in (
        (dict(epochs=0), "--probe-epochs"),
        (dict(epochs=2.5), "--probe-epochs"),
        (dict(batch_size=0), "--probe-batch-size"),
        (dict(lr=0.0), "--probe-lr"),
        (dict(lr=float("nan")), "--probe-lr"),
        (dict(weight_decay=-1.0), "--probe-weight-decay"),
        (dict(weight_decay=float("inf")), "--probe-weight-decay"),
    ):
        with pytest.raises(SlimpError, match=match):
            probe_config("slimp", **bad)
    with pytest.raises(SlimpError, match="--probe-recipe"):
        probe_config("dino")


def _store(write_store, tmp_path, *, variant_config=None, n=300, name="s.h5"):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(n, 64)).astype(np.float32)  # a tiny model's width
    label = (image @ rng.normal(size=64) > 0).astype(int)
    noise = rng.normal(size=(n, 1)).astype(np.float32)
    return write_store(
        tmp_path / name,
        features={"image": image},
        patient_id=np.arange(n),
        label=label,
        malignant=label.astype(np.int8),
        raw={"lesion": (np.column_stack([noise, label]), ["age", "leak"], ["age", "leak"])},
    )


def test_run_probe_linear_classifier(write_store, tmp_path, monkeypatch, one_torch_thread):
    import slimp_cli.eval.probe as probe

    store = _store(write_store, tmp_path)
    calls = []
    real = probe.linear_probe_proba
    monkeypatch.setattr(
        probe,
        "linear_probe_proba",
        lambda x, *a, **kw: calls.append((x.shape[1], kw["config"])) or real(x, *a, **kw),
    )
    report = run_probe(
        store, methods=["linear"], seeds=[0], classifier="linear", baseline=True, device="cpu"
    )
    rows = {r["method"]: r for r in report["results"]}
    lin = rows["linear"]
    assert lin["params"] == {
        "classifier": "linear",
        "recipe": "slimp",
        **RECIPES["slimp"].to_dict(),
        "augmentation": "none",
    }
    assert lin["metrics"]["accuracy"]["mean"] >= 0.8  # a linear rule (logreg: 0.93)
    # the image features (64 columns) and the raw metadata (2 columns) went through the probe
    assert [w for w, _ in calls] == [64, 2] and calls[0][1] == RECIPES["slimp"]
    assert rows["baseline-logreg"]["params"]["classifier"] == "linear"
    assert rows["baseline-logreg"]["metrics"]["accuracy"]["mean"] >= 0.95  # the leak column
    # logreg stays the default, and says so
    default = run_probe(store, methods=["linear"], seeds=[0], device="cpu")
    assert default["results"][0]["params"]["classifier"] == "logreg"


def test_sm3_store_gets_sm3_recipe_and_overrides(write_store, tmp_path, monkeypatch):
    import h5py

    import slimp_cli.eval.probe as probe

    store = _store(write_store, tmp_path, n=120)
    with h5py.File(store, "a") as f:
        f.attrs["variant"] = "sm3"
    seen = []
    monkeypatch.setattr(
        probe,
        "linear_probe_proba",
        lambda x, y, xt, **kw: seen.append(kw["config"]) or np.full((len(xt), 2), 0.5),
    )
    report = run_probe(store, methods=["linear"], seeds=[0], classifier="linear")
    assert seen[-1] == RECIPES["sm3"] and report["results"][0]["params"]["recipe"] == "sm3"
    run_probe(
        store,
        methods=["linear"],
        seeds=[0],
        classifier="linear",
        probe_recipe="slimp",
        probe_epochs=3,
        probe_lr=0.5,
        probe_weight_decay=0.0,
        probe_batch_size=7,
    )
    assert seen[-1] == LinearProbeConfig(epochs=3, lr=0.5, weight_decay=0.0, batch_size=7)


def test_run_probe_refuses_options_of_the_other_classifier(write_store, tmp_path):
    store = _store(write_store, tmp_path, n=60)
    with pytest.raises(SlimpError, match="--classifier 'svm'"):
        run_probe(store, classifier="svm")
    with pytest.raises(SlimpError, match="--cv"):
        run_probe(store, classifier="linear", cv=True)
    with pytest.raises(SlimpError, match="--probe-epochs: options of --classifier linear"):
        run_probe(store, probe_epochs=5)
    with pytest.raises(SlimpError, match="--probe-lr"):
        run_probe(store, classifier="linear", probe_lr=-1.0)


def test_cli_classifier_linear(write_store, tmp_path, run_slimp):
    store = _store(write_store, tmp_path, n=200)
    out = tmp_path / "p.json"
    res = run_slimp(
        "probe",
        store,
        "--method",
        "linear",
        "--seeds",
        "0",
        "--classifier",
        "linear",
        "--probe-epochs",
        "5",
        "--probe-lr",
        "0.01",
        "--json",
        out,
    )
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["params"]["classifier"] == "linear" and row["params"]["epochs"] == 5
    assert row["params"]["lr"] == 0.01 and row["params"]["batch_size"] == 128


BAD_USAGE = [
    ("--classifier", "svm"),
    ("--classifier", "linear", "--probe-epochs", "0"),
    ("--classifier", "linear", "--probe-lr", "nan"),
    ("--classifier", "linear", "--probe-lr", "0"),
    ("--classifier", "linear", "--probe-weight-decay", "-0.1"),
    ("--classifier", "linear", "--probe-batch-size", "0"),
    ("--classifier", "linear", "--probe-recipe", "dino"),
    ("--classifier", "linear", "--cv"),
    ("--classifier", "linear", "--task", "derm7pt-multilabel"),
    ("--probe-epochs", "5"),
    ("--probe-recipe", "sm3"),
]


@pytest.mark.parametrize("args", BAD_USAGE)
def test_bad_linear_options_exit_2(args, write_store, tmp_path, run_cli):
    store = _store(write_store, tmp_path, n=40)
    res = run_cli("probe", store, *args)
    assert res.exit_code == 2, (args, res.output)
    assert "Traceback" not in res.output


def test_bad_linear_options_exit_2_installed(write_store, tmp_path, run_slimp):
    """The same through the installed executable: a Typer check and a combination check."""
    store = _store(write_store, tmp_path, n=40)
    for args in (BAD_USAGE[2], BAD_USAGE[7]):
        res = run_slimp("probe", store, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and "Usage:" in res.stderr


def test_cli_choices_equal_the_library():
    from slimp_cli.commands import choices
    from slimp_cli.eval.probe import CLASSIFIERS

    assert choices.CLASSIFIERS == CLASSIFIERS
    assert choices.PROBE_RECIPES == tuple(RECIPES)
