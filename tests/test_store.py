"""Feature store: writer/reader round trip, atomic writes, validation of bad stores.

`write_store` (conftest.py) is the synthetic-store helper of the evaluation tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.features.store import FORMAT, FeatureStore, FeatureStoreWriter


def _example(write_store, tmp_path: Path, n: int = 100) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    arrays = {
        "features": {
            "image": rng.normal(size=(n, 4)).astype(np.float32),
            "lesion": rng.normal(size=(n, 4)).astype(np.float32),
        },
        "patient_id": np.arange(n) // 3,
        "label": rng.integers(0, 3, n),
        "malignant": rng.integers(-1, 2, n).astype(np.int8),
        "raw": {
            "lesion": (
                rng.normal(size=(n, 3)).astype(np.float32),
                ["a", "b=x", "b=y"],
                ["a", "b", "b"],
            )
        },
        "phenotype": (
            rng.normal(size=(4, 8)).astype(np.float32),
            rng.normal(size=4).astype(np.float32),
        ),
    }
    path = write_store(tmp_path / "s.h5", classes=["x", "y", "z"], **arrays)
    return path, arrays


def test_round_trip(write_store, tmp_path):
    path, a = _example(write_store, tmp_path)
    with FeatureStore.open(path) as st:
        assert st.n == 100
        assert st.feature_names == ["image", "lesion"]
        assert st.dims == {"image": 4, "lesion": 4}
        np.testing.assert_array_equal(st.block("image"), a["features"]["image"])
        np.testing.assert_array_equal(
            st.features(["lesion", "image"]),
            np.concatenate([a["features"]["lesion"], a["features"]["image"]], 1),
        )
        np.testing.assert_array_equal(st.label, a["label"])
        np.testing.assert_array_equal(st.malignant, a["malignant"])
        assert st.classes == ["x", "y", "z"]
        assert list(st.lesion_id[:3]) == ["L0", "L1", "L2"]
        assert list(st.patient_id[:4]) == ["0", "0", "0", "1"]
        x, cols, src = st.raw("lesion")
        np.testing.assert_array_equal(x, a["raw"]["lesion"][0])
        assert cols == ["a", "b=x", "b=y"] and src == ["a", "b", "b"]
        assert st.raw("patient") is None
        np.testing.assert_array_equal(st.phenotype[0], a["phenotype"][0])
        assert st.config == {"model": "test"} and st.schema == {"name": "synthetic"}
        assert st.variant == "nested"
    with h5py.File(path, "r") as f:  # readable with h5py alone, layout of DESIGN.md
        assert f.attrs["format"] == FORMAT and bool(f.attrs["complete"])
        assert json.loads(f["label"].attrs["classes"]) == ["x", "y", "z"]
        assert f["features/image"].dtype == np.float32 and f["features/image"].chunks is not None
        assert f["malignant"].dtype == np.int8 and f["label"].dtype == np.int64
    assert not list(tmp_path.glob(".*tmp*"))


def test_unknown_n_grows(tmp_path):
    with FeatureStoreWriter(
        tmp_path / "g.h5", n=None, dims={"image": 2}, config={}, schema=None, classes=["a"]
    ) as w:
        for s in range(0, 50, 7):
            b = min(7, 50 - s)
            w.append(
                lesion_id=["x"] * b,
                patient_id=["p"] * b,
                label=[0] * b,
                malignant=[0] * b,
                features={"image": np.full((b, 2), s, np.float32)},
            )
    with FeatureStore.open(tmp_path / "g.h5") as st:
        assert st.n == 50 and st.block("image")[49, 0] == 49 // 7 * 7


def test_interrupted_write_leaves_nothing(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with FeatureStoreWriter(
            out, n=10, dims={"image": 2}, config={}, schema=None, classes=["a"]
        ) as w:
            w.append(
                lesion_id=["x"],
                patient_id=["p"],
                label=[0],
                malignant=[0],
                features={"image": np.zeros((1, 2), np.float32)},
            )
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_wrong_row_count_and_shapes(tmp_path):
    w = FeatureStoreWriter(
        tmp_path / "s.h5", n=3, dims={"image": 2}, config={}, schema=None, classes=["a"]
    )
    with pytest.raises(SlimpError, match="shape"):
        w.append(
            lesion_id=["x"],
            patient_id=["p"],
            label=[0],
            malignant=[0],
            features={"image": np.zeros((1, 3), np.float32)},
        )
    w.append(
        lesion_id=["x"],
        patient_id=["p"],
        label=[0],
        malignant=[0],
        features={"image": np.zeros((1, 2))},
    )
    with pytest.raises(SlimpError, match="wrote 1 rows but n=3"):
        w.close()
    assert not (tmp_path / "s.h5").exists() and list(tmp_path.iterdir()) == []


def test_bad_stores(write_store, tmp_path):
    with pytest.raises(SlimpError, match="not found"):
        FeatureStore.open(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(SlimpError, match="not an HDF5 file"):
        FeatureStore.open(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SlimpError, match="not a slimp feature store"):
        FeatureStore.open(tmp_path / "other.h5")
    path, _ = _example(write_store, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(SlimpError, match=r"incomplete \(interrupted embed\?\); re-run slimp embed"):
        FeatureStore.open(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]
    with pytest.raises(SlimpError, match="incomplete"):
        FeatureStore.open(path)


def test_missing_level_and_pseudo(write_store, tmp_path):
    path, _ = _example(write_store, tmp_path)
    with FeatureStore.open(path) as st:
        with pytest.raises(SlimpError, match="no features/patient"):
            st.block("patient")
        with pytest.raises(SlimpError, match="no pseudo/ilp"):
            st.pseudo("ilp")
        assert st.pseudo_strategies == []
