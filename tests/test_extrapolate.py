"""Metadata extrapolation (ilp / il / ii) against brute-force argmax; probe on pseudo features."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval.extrapolate import extrapolate
from slimp_cli.eval.probe import run_probe
from slimp_cli.features.store import FeatureStore

D = 6


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def stores(write_store, tmp_path):
    rng = np.random.default_rng(0)
    n_ref, n_tgt = 250, 120
    pid = np.sort(rng.integers(0, 60, n_ref))
    ref = {
        "image": rng.normal(size=(n_ref, D)),
        "lesion": rng.normal(size=(n_ref, D)),
        "patient": rng.normal(size=(60, D))[pid],
    }
    ref = {k: v.astype(np.float32) for k, v in ref.items()}
    weight, bias = (
        rng.normal(size=(D, 2 * D)).astype(np.float32),
        rng.normal(size=D).astype(np.float32),
    )
    ref_path = write_store(
        tmp_path / "ref.h5",
        features=ref,
        patient_id=pid,
        label=rng.integers(0, 2, n_ref),
        phenotype=(weight, bias),
        config={"checkpoint_sha256": "abc"},
    )
    tgt_image = rng.normal(size=(n_tgt, D)).astype(np.float32)
    label = (tgt_image[:, 0] > 0).astype(int)
    tgt_path = write_store(
        tmp_path / "tgt.h5",
        features={"image": tgt_image},
        patient_id=np.arange(n_tgt),
        label=label,
        config={"checkpoint_sha256": "abc"},
    )
    return ref_path, tgt_path, ref, pid, (weight, bias), tgt_image


@pytest.mark.parametrize("strategy", ["ilp", "il", "ii"])
def test_strategies_match_brute_force(stores, strategy):
    ref_path, tgt_path, ref, pid, (weight, bias), w = stores
    summary = extrapolate(ref_path, tgt_path, strategy=strategy, device="cpu", chunk_size=17)
    assert summary["levels"] == ["lesion", "patient"] and summary["n"] == len(w)
    with FeatureStore.open(tgt_path) as st:
        ps = st.pseudo(strategy)
        assert st.pseudo_strategies == [strategy]
    n = len(w)
    assert ps["lesion"].shape == (n, D) and ps["patient"].shape == (n, D)
    assert ps["lesion_index"].shape == ps["patient_index"].shape == ps["similarity"].shape == (n,)
    first = ref["image"] if strategy == "ii" else ref["lesion"]
    sims = _unit(w) @ _unit(first).T
    j = sims.argmax(1)
    np.testing.assert_array_equal(ps["lesion_index"], j)
    np.testing.assert_allclose(ps["similarity"], sims.max(1), atol=1e-5)
    np.testing.assert_array_equal(ps["lesion"], ref["lesion"][j])
    if strategy == "ilp":
        z = np.concatenate([w, ref["lesion"][j]], 1) @ weight.T + bias
        _, first_rows = np.unique(np.array([str(p) for p in pid]), return_index=True)
        first_rows = np.sort(first_rows)
        p_sims = _unit(z) @ _unit(ref["patient"][first_rows]).T
        rows = first_rows[p_sims.argmax(1)]
        np.testing.assert_array_equal(ps["patient_index"], rows)
        np.testing.assert_allclose(ps["patient_similarity"], p_sims.max(1), atol=1e-5)
    else:
        np.testing.assert_array_equal(ps["patient_index"], j)
    np.testing.assert_array_equal(ps["patient"], ref["patient"][ps["patient_index"]])
    report = run_probe(tgt_path, pseudo=strategy, seeds=[0], k=5, device="cpu")
    assert report["results"][0]["features"] == ["image", "lesion", "patient"]
    assert report["results"][0]["pseudo"] == strategy


def test_rerun_replaces_and_no_temp_left(stores):
    ref_path, tgt_path, *_ = stores
    extrapolate(ref_path, tgt_path, strategy="ilp", device="cpu")
    extrapolate(ref_path, tgt_path, strategy="il", device="cpu")
    extrapolate(ref_path, tgt_path, strategy="ilp", device="cpu", chunk_size=1000)
    with h5py.File(tgt_path, "r") as f:
        assert sorted(f["pseudo"].keys()) == ["il", "ilp"]
        assert f["pseudo/ilp"].attrs["strategy"] == "ilp"


def test_flat_reference_omits_patient(write_store, tmp_path):
    rng = np.random.default_rng(1)
    ref = write_store(
        tmp_path / "flat.h5",
        features={
            "image": rng.normal(size=(50, D)).astype(np.float32),
            "lesion": rng.normal(size=(50, D)).astype(np.float32),
        },
        patient_id=np.arange(50),
        label=np.arange(50) % 2,
    )
    tgt = write_store(
        tmp_path / "t.h5",
        features={"image": rng.normal(size=(30, D)).astype(np.float32)},
        patient_id=np.arange(30),
        label=np.arange(30) % 2,
    )
    summary = extrapolate(ref, tgt, strategy="ilp", device="cpu")
    assert summary["levels"] == ["lesion"] and any(
        "no patient features" in w for w in summary["warnings"]
    )
    with FeatureStore.open(tgt) as st:
        assert set(st.pseudo("ilp")) == {"lesion", "lesion_index", "similarity"}
    report = run_probe(tgt, pseudo="ilp", seeds=[0], methods=["knn"], k=3, device="cpu")
    assert report["results"][0]["features"] == ["image", "lesion"]
    with pytest.raises(SlimpError, match="no pseudo/ilp/patient"):
        run_probe(tgt, pseudo="ilp", features=["image", "patient"])


def test_bad_inputs(write_store, stores, tmp_path):
    ref_path, tgt_path, ref, pid, _, _ = stores
    with pytest.raises(SlimpError, match="same store"):
        extrapolate(tgt_path, tgt_path)
    img_only = write_store(
        tmp_path / "io.h5",
        features={"image": ref["image"]},
        patient_id=pid,
        label=np.arange(len(pid)) % 2,
    )
    with pytest.raises(SlimpError, match="needs reference lesion"):
        extrapolate(img_only, tgt_path, strategy="il")
    no_pheno = write_store(
        tmp_path / "np.h5", features=ref, patient_id=pid, label=np.arange(len(pid)) % 2
    )
    with pytest.raises(SlimpError, match="phenotype"):
        extrapolate(no_pheno, tgt_path, strategy="ilp")
    extrapolate(no_pheno, tgt_path, strategy="il", device="cpu")  # il needs no phenotype layer
    with pytest.raises(SlimpError, match="has no features/image"):
        extrapolate(
            ref_path,
            write_store(
                tmp_path / "lo.h5",
                features={"lesion": ref["lesion"]},
                patient_id=pid,
                label=np.arange(len(pid)) % 2,
            ),
        )
    small = write_store(
        tmp_path / "d.h5",
        features={"image": np.ones((5, D + 1), np.float32)},
        patient_id=np.arange(5),
        label=np.arange(5) % 2,
    )
    with pytest.raises(SlimpError, match="dimension"):
        extrapolate(ref_path, small)
    other = write_store(
        tmp_path / "o.h5",
        features={"image": np.ones((5, D), np.float32)},
        patient_id=np.arange(5),
        label=np.arange(5) % 2,
        config={"checkpoint_sha256": "zzz"},
    )
    with pytest.raises(SlimpError, match="different checkpoint"):
        extrapolate(ref_path, other)
    with pytest.raises(SlimpError, match="--strategy"):
        extrapolate(ref_path, tgt_path, strategy="xx")


def test_patient_pooling_gives_one_x_hat_per_target_patient(write_store, stores, tmp_path):
    """Sec. 3.3: z_hat pooled over each target patient's lesions, one x_hat per patient."""
    ref_path, _, ref, pid, (weight, bias), _ = stores
    rng = np.random.default_rng(5)
    n = 90
    tpid = np.sort(rng.integers(0, 25, n))  # 25 target patients with several lesions each
    w = rng.normal(size=(n, D)).astype(np.float32)
    tgt = write_store(
        tmp_path / "tgt_p.h5",
        features={"image": w},
        patient_id=tpid,
        label=(w[:, 0] > 0).astype(int),
        config={"checkpoint_sha256": "abc"},
        schema={"name": "target", "patient_id": "patient_id"},
    )
    summary = extrapolate(ref_path, tgt, strategy="ilp", device="cpu", chunk_size=16)
    assert summary["pool"] == "patient"  # the default when the target has patient ids
    with FeatureStore.open(tgt) as st:
        got = st.pseudo("ilp")
    # hand computation
    h_idx = np.argmax(_unit(w) @ _unit(ref["lesion"]).T, axis=1)
    z = np.concatenate([w, ref["lesion"][h_idx]], axis=1) @ weight.T + bias
    _, first = np.unique(pid, return_index=True)
    pool_rows = np.sort(first)
    for p in np.unique(tpid):
        rows = tpid == p
        z_p = z[rows].mean(0, keepdims=True)
        best = np.argmax(_unit(z_p) @ _unit(ref["patient"][pool_rows]).T, axis=1)[0]
        # every lesion of the patient carries the same x_hat
        np.testing.assert_allclose(
            got["patient"][rows],
            np.repeat(ref["patient"][pool_rows[best]][None], rows.sum(), 0),
            rtol=1e-6,
        )
        assert set(got["patient_index"][rows].tolist()) == {pool_rows[best]}
    # --pool lesion retrieves per lesion
    summary = extrapolate(ref_path, tgt, strategy="ilp", pool="lesion", device="cpu", chunk_size=16)
    with FeatureStore.open(tgt) as st:
        per_lesion = st.pseudo("ilp")["patient_index"]
    want = pool_rows[np.argmax(_unit(z) @ _unit(ref["patient"][pool_rows]).T, axis=1)]
    np.testing.assert_array_equal(per_lesion, want)
    with pytest.raises(SlimpError, match="--pool"):
        extrapolate(ref_path, tgt, strategy="ilp", pool="visit", device="cpu")
