"""`probe --task derm7pt-multilabel`: criteria decoded from raw/lesion, probed per criterion."""

import numpy as np
import pytest

from slimp_cli.errors import SlimpError
from slimp_cli.eval.multilabel import CRITERIA, criterion_targets, run_multilabel
from slimp_cli.schema import encode_raw, raw_columns
from slimp_cli.store import FeatureStoreWriter

VALUES = ["absent", "typical", "atypical"]


def make_store(path, n=240, seed=0):
    """Image features separate `pigment_network` linearly; the other criteria are noise."""
    rng = np.random.default_rng(seed)
    features = [{"name": c, "type": "categorical", "vocab": sorted(VALUES)} for c in CRITERIA]
    records = [{c: VALUES[rng.integers(3)] for c in CRITERIA} for _ in range(n)]
    for r in records[:10]:
        r["streaks"] = None  # missing: left out of that criterion's probe
    centres = rng.normal(size=(3, 16)) * 4
    image = np.stack([centres[VALUES.index(r["pigment_network"])] for r in records]) + rng.normal(
        size=(n, 16)
    )
    cols, sources = raw_columns(features)
    with FeatureStoreWriter(
        path,
        n=n,
        dims={"image": 16},
        config={},
        schema=None,
        classes=["a", "b"],
        raw_columns={"lesion": (cols, sources)},
    ) as w:
        w.append(
            lesion_id=[str(i) for i in range(n)],
            patient_id=[str(i) for i in range(n)],
            label=np.zeros(n, int),
            malignant=np.zeros(n, np.int8),
            features={"image": image.astype(np.float32)},
            raw={"lesion": encode_raw(features, records)},
        )
    return path, records


def test_criterion_targets_decode_one_hot_groups(tmp_path):
    features = [{"name": "streaks", "type": "categorical", "vocab": ["absent", "irregular"]}]
    cols, _ = raw_columns(features)
    x = encode_raw(features, [{"streaks": "irregular"}, {"streaks": None}, {"streaks": "absent"}])
    y, classes = criterion_targets(x, cols, "streaks")
    assert classes == ["absent", "irregular"] and y.tolist() == [1, -1, 0]
    with pytest.raises(SlimpError, match="no 'pigmentation' columns"):
        criterion_targets(x, cols, "pigmentation")


def test_probe_finds_the_criterion_the_images_encode(tmp_path):
    store, _ = make_store(tmp_path / "s.h5")
    report = run_multilabel(store, seeds=[0, 1], methods=["linear", "knn"])
    by = {(r["target"], r["method"]): r["metrics"] for r in report["results"]}
    assert set(t for t, _ in by) == set(CRITERIA) | {"mean"}
    for method in ("linear", "knn"):
        assert by[("pigment_network", method)]["balanced_accuracy"]["mean"] >= 0.9
        assert by[("streaks", method)]["balanced_accuracy"]["mean"] <= 0.6  # noise: near chance 1/3
        means = [by[(c, method)]["accuracy"]["mean"] for c in CRITERIA]
        assert by[("mean", method)]["accuracy"]["mean"] == pytest.approx(np.mean(means))


def test_lesion_features_are_refused_as_a_leak(tmp_path):
    store, _ = make_store(tmp_path / "s.h5", n=60)
    with pytest.raises(SlimpError, match="leak"):
        run_multilabel(store, features=["lesion"])
