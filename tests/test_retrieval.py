"""Chunked search and retrieval metrics: known answers and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from slimp_cli.errors import SlimpError
from slimp_cli.eval.metrics import rank_metrics
from slimp_cli.eval.retrieval import ranks_of_relevant, run_retrieval


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hand_made_3x3_ranks():
    # gallery on the unit circle at 0, 60 and 180 degrees; queries placed so that the true match
    # (same index) is ranked 1, 2 and 3 respectively.
    deg = np.deg2rad
    gallery = np.array([[1, 0], [np.cos(deg(60)), np.sin(deg(60))], [-1, 0]])
    queries = np.array(
        [
            [1, 0.1],  # nearest g0 (rank 1 for match 0)
            [1, 0.0],  # order g0, g1, g2: match 1 at rank 2
            [1, 0.2],
        ]
    )  # order g0, g1, g2: match 2 at rank 3
    ids = np.arange(3)
    greater, tied = ranks_of_relevant(
        queries, gallery, query_groups=ids, gallery_groups=ids, query_chunk=2, gallery_chunk=2
    )
    np.testing.assert_array_equal(greater + 1, [1, 2, 3])
    np.testing.assert_array_equal(tied, [0, 0, 0])
    m = rank_metrics(greater, tied, ks=(1, 2, 5))
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@2"] == pytest.approx(2 / 3) and m["R@5"] == 1.0
    assert m["NDCG@2"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 3)
    assert m["mAP"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def _store(write_store, tmp_path, image, lesion, pid, patient=None, name="r.h5"):
    feats = {"image": image.astype(np.float32), "lesion": lesion.astype(np.float32)}
    if patient is not None:
        feats["patient"] = patient.astype(np.float32)
    n = len(image)
    return write_store(tmp_path / name, features=feats, patient_id=pid, label=np.arange(n) % 2)


def test_identical_embeddings_are_perfect(write_store, tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 12))
    rep = run_retrieval(
        _store(write_store, tmp_path, x, x, np.arange(300)),
        device="cpu",
        chunk_size=64,
        n_negative=5000,
    )
    for task in ("image_to_lesion", "lesion_to_image"):
        assert rep[task]["R@1"] == 1.0 and rep[task]["mAP"] == 1.0 and rep[task]["NDCG@10"] == 1.0
    assert rep["similarity_percentiles"]["matching"]["2"] == pytest.approx(1.0, abs=1e-5)
    assert abs(rep["similarity_percentiles"]["non_matching"]["50"]) < 0.1
    assert "image_to_patient" not in rep


def test_random_embeddings_recall_is_k_over_n(write_store, tmp_path):
    rng = np.random.default_rng(1)
    n = 1000
    rep = run_retrieval(
        _store(
            write_store, tmp_path, rng.normal(size=(n, 32)), rng.normal(size=(n, 32)), np.arange(n)
        ),
        device="cpu",
        chunk_size=128,
        n_negative=2000,
    )
    for k in (5, 20, 100):
        assert rep["image_to_lesion"][f"R@{k}"] == pytest.approx(
            k / n, abs=max(0.02, 3 * np.sqrt(k / n / n))
        )
    assert rep["image_to_lesion"]["mAP"] < 0.05


def test_patient_tasks_against_brute_force(write_store, tmp_path):
    rng = np.random.default_rng(2)
    n, d = 120, 6
    pid = rng.integers(0, 30, n)
    pid[:30] = np.arange(30)  # every patient has a lesion
    pvec = rng.normal(size=(30, d))
    image = pvec[pid] + rng.normal(size=(n, d))  # images near their patient's vector
    lesion = image + 0.5 * rng.normal(size=(n, d))
    rep = run_retrieval(
        _store(write_store, tmp_path, image, lesion, pid, patient=pvec[pid]),
        device="cpu",
        chunk_size=16,
        n_negative=1000,
    )
    # brute force: patient gallery sorted by patient id (np.unique order of the string ids)
    keys, inv = np.unique(np.array([str(p) for p in pid]), return_inverse=True)
    gal = np.stack([pvec[int(k)] for k in keys])
    sims = _unit(image) @ _unit(gal).T
    ranks = np.array([1 + np.sum(sims[i] > sims[i, inv[i]]) for i in range(n)])
    assert rep["image_to_patient"] == pytest.approx(rank_metrics(ranks - 1))
    sims_t = _unit(gal) @ _unit(image).T  # patient -> images: rank of the best image of the patient
    ranks_t = []
    for p in range(len(keys)):
        own = inv == p
        best = sims_t[p, own].max()
        ranks_t.append(1 + np.sum(sims_t[p, ~own] > best))
    assert rep["patient_to_image"] == pytest.approx(rank_metrics(np.array(ranks_t) - 1))
    assert rep["n_patients"] == 30


def test_split_and_plots(write_store, tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    x = rng.normal(size=(n, 8))
    store = _store(write_store, tmp_path, x, x + 0.3 * rng.normal(size=(n, 8)), np.arange(n) // 4)
    rep = run_retrieval(
        store, split="patient", seed=1, device="cpu", plots_dir=tmp_path / "p", n_negative=1000
    )
    assert 24 <= rep["n_queries"] <= 56 and rep["split"]["kind"] == "patient"
    assert set(rep["similarity_percentiles"]) == {"matching", "non_matching", "retrieved"}
    pct = rep["similarity_percentiles"]
    assert pct["matching"]["50"] > pct["retrieved"]["50"] > pct["non_matching"]["50"]
    assert (tmp_path / "p" / "similarity.png").stat().st_size > 1000


def test_needs_lesion_features(write_store, tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    store = write_store(
        tmp_path / "i.h5", features={"image": x}, patient_id=np.arange(10), label=np.arange(10) % 2
    )
    with pytest.raises(SlimpError, match="no features/lesion"):
        run_retrieval(store)


def test_phenotype_to_patient_against_brute_force(write_store, tmp_path):
    rng = np.random.default_rng(4)
    n, d, n_pat = 150, 4, 25
    pid = np.sort(np.concatenate([np.arange(n_pat), rng.integers(0, n_pat, n - n_pat)]))
    image, lesion = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    pvec = rng.normal(size=(n_pat, d))
    weight, bias = rng.normal(size=(d, 2 * d)), rng.normal(size=d)
    store = write_store(
        tmp_path / "ph.h5",
        features={
            "image": image.astype(np.float32),
            "lesion": lesion.astype(np.float32),
            "patient": pvec[pid].astype(np.float32),
        },
        patient_id=np.array([f"p{p:03d}" for p in pid]),
        label=np.arange(n) % 2,
        phenotype=(weight.astype(np.float32), bias.astype(np.float32)),
    )
    rep = run_retrieval(store, device="cpu", n_negative=100)
    z = np.stack(
        [
            np.concatenate([image[pid == p].mean(0), lesion[pid == p].mean(0)]) @ weight.T + bias
            for p in range(n_pat)
        ]
    )
    sims = _unit(z) @ _unit(pvec).T
    ranks = np.array([1 + np.sum(sims[p] > sims[p, p]) for p in range(n_pat)])
    assert rep["phenotype_to_patient"] == pytest.approx(rank_metrics(ranks - 1))


def test_twenty_identical_vectors_per_group_give_chance_recall(write_store, tmp_path):
    # 10 metadata vectors, each shared by 20 lesions (equal metadata -> equal embeddings): the
    # image of a lesion matches all 20 equally, so random tie-breaking gives R@1 = 1/20.
    rng = np.random.default_rng(0)
    n, per = 200, 20
    meta = rng.normal(size=(n // per, 8))[np.arange(n) // per]
    image = meta + 0.0  # the image embedding points exactly at its metadata vector
    rep = run_retrieval(
        _store(write_store, tmp_path, image, meta, np.arange(n)),
        split="all",
        device="cpu",
        n_negative=100,
    )
    m = rep["image_to_lesion"]
    assert m["R@1"] == pytest.approx(1 / 20)
    assert m["R@10"] == pytest.approx(10 / 20) and m["R@20"] == pytest.approx(1.0)
    assert m["mean_rank"] == pytest.approx(10.5)  # the mid-rank of 1..20
    assert m["mAP"] == pytest.approx(np.mean(1 / np.arange(1, 21)))


def test_hand_made_ties_give_exact_mid_rank_metrics():
    # query 0: its match ties with one other item and one item is strictly better -> rank 2 or 3
    # query 1: its match ties with two others -> rank 1, 2 or 3; query 2: alone at rank 1
    gallery = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0.6, 0.8, 0]])
    queries = np.array([[0.6, 0.8, 0], [1.0, 0, 0], [0, 0, 1.0]])
    # relevant: q0 -> g0 (cos .6, tied with g1, beaten by g3), q1 -> g1 (cos 1, tied with g0 and
    # nothing else), q2 -> g2
    greater, tied = ranks_of_relevant(
        queries, gallery, query_groups=np.array([0, 1, 2]), gallery_groups=np.array([0, 1, 2, 3])
    )
    np.testing.assert_array_equal(greater, [1, 0, 0])
    np.testing.assert_array_equal(tied, [1, 1, 0])
    m = rank_metrics(greater, tied, ks=(1, 2))
    # rank distributions: q0 uniform{2, 3}, q1 uniform{1, 2}, q2 {1}
    assert m["R@1"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert m["R@2"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["mAP"] == pytest.approx(((1 / 2 + 1 / 3) / 2 + (1 + 1 / 2) / 2 + 1) / 3)
    assert m["NDCG@2"] == pytest.approx(((1 / np.log2(3)) / 2 + (1 + 1 / np.log2(3)) / 2 + 1) / 3)
    assert m["mean_rank"] == pytest.approx((2.5 + 1.5 + 1) / 3)
