"""Chunked search and retrieval metrics: known answers and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
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


def _lesion_store(path, *, lesion_id, features, modalities=None):
    """A store with given lesion ids (rows = images; one patient per lesion)."""
    from slimp_cli.features.store import FeatureStoreWriter

    n = len(lesion_id)
    names = ["dermoscopic", "clinical"] if modalities is not None else None
    with FeatureStoreWriter(
        path,
        n=n,
        dims={k: v.shape[1] for k, v in features.items()},
        config={"model": "test"},
        schema={"name": "synthetic"},
        classes=["c0", "c1"],
        variant="sm3" if names else "nested",
        modalities=names,
    ) as w:
        w.append(
            lesion_id=[str(x) for x in lesion_id],
            patient_id=[f"p{x}" for x in lesion_id],
            label=np.arange(n) % 2,
            malignant=np.arange(n) % 2,
            features={k: v.astype(np.float32) for k, v in features.items()},
            modalities=modalities,
        )
    return path


def _twins(n_lesions=100, n_twins=30, seed=0):
    """Lesion id per row: every lesion once, `n_twins` of them with 1-2 more images."""
    rng = np.random.default_rng(seed)
    extra = np.repeat(np.arange(n_twins), rng.integers(1, 3, n_twins))
    return rng.permutation(np.concatenate([np.arange(n_lesions), extra]))


def test_twin_images_are_relevant_not_ties(tmp_path):
    """Known answer (issue 17): image and lesion vectors equal per lesion, twin images present:
    every image finds its lesion's metadata first, R@1 = 1 both ways (relevance by row gave
    0.67 here: a twin's equal metadata vector tied with the image's own)."""
    lid = _twins()
    per_lesion = np.random.default_rng(1).normal(size=(100, 16))
    x = per_lesion[lid]
    store = _lesion_store(tmp_path / "t.h5", lesion_id=lid, features={"image": x, "lesion": x})
    rep = run_retrieval(store, split="all", device="cpu", n_negative=2000)
    assert rep["n_queries"] == len(lid) > 130 and rep["n_lesions"] == 100
    for task in ("image_to_lesion", "lesion_to_image"):
        m = rep[task]
        assert m["R@1"] == 1.0 and m["mAP"] == 1.0 and m["mean_rank"] == 1.0, (task, m)


def test_twin_metadata_that_differs_stays_a_relevant_record(tmp_path):
    """Twin rows whose lesion vectors differ (metadata recorded per image) are two records of
    one lesion: both relevant to the lesion's images; other lesions' duplicates count once."""
    lid = np.array([0, 0, 1, 1, 2])
    e = np.eye(4)
    image = np.array([e[0], e[0], e[1], e[1], e[2]])
    # lesion 0: records e0 and e0 + e3 (differ); lesion 1: two equal records near e0 (a
    # strong non-relevant competitor for lesion 0, counted once); lesion 2: e2
    lesion = np.array([e[0] + e[3], e[0], e[0] + 0.1 * e[1], e[0] + 0.1 * e[1], e[2]])
    store = _lesion_store(
        tmp_path / "d.h5", lesion_id=lid, features={"image": image, "lesion": lesion}
    )
    rep = run_retrieval(store, split="all", device="cpu", n_negative=100)
    # image of lesion 0 (e0): best relevant record e0 (cos 1) beats lesion 1's (cos .995):
    # rank 1; images of lesion 1 (e1): lesion 1's record has cos .0995, lesion 0's e0 + e3
    # 0, e0 0, lesion 2 0 -> rank 1; lesion 2 -> rank 1
    assert rep["image_to_lesion"]["R@1"] == 1.0
    # lesion -> image over the 4 records (lesion 0 twice, 1 once, 2 once):
    # lesion 1's record (e0 + .1 e1) is nearest the images e0 of lesion 0 (cos .995 > .0995):
    # its best own image e1 ranks behind the two e0 images -> rank 3; the rest rank 1
    m = rep["lesion_to_image"]
    assert m["R@1"] == pytest.approx(3 / 4) and m["mean_rank"] == pytest.approx((1 + 1 + 3 + 1) / 4)


def test_lesion_records_dedupe_equal_twins_only():
    from slimp_cli.eval.retrieval import lesion_codes, lesion_records

    codes = lesion_codes(np.array(["b", "a", "b", "b", "c"]))
    np.testing.assert_array_equal(codes, [1, 0, 1, 1, 2])
    v = np.array([[1, 0], [0, 1], [2, 1e-7], [1, 1], [3, 3]], dtype=np.float32)
    # row 2 equals row 0 up to scale and 1e-7 (the same record); row 3 differs
    np.testing.assert_array_equal(lesion_records(v, codes), [0, 1, 3, 4])


def test_non_matching_pairs_are_of_other_lesions():
    from slimp_cli.eval.retrieval import similarity_samples

    groups = np.array([0, 0, 0, 0, 1, 2, 2, 3])
    n = len(groups)
    # twins share a direction: cos(image_i, lesion_j) = 1 same row, 1/2 twin, 0 other lesion
    image = lesion = np.eye(n, 12) + np.eye(12)[8 + groups]
    match, non = similarity_samples(image, lesion, groups=groups, n_negative=20000, seed=3)
    np.testing.assert_allclose(match, 1.0, rtol=1e-6)
    np.testing.assert_allclose(non, 0.0, atol=1e-6)  # never the row itself nor a twin
    # which j: every image the same, lesion j's cosine with it is angle_j: i uniform, then j
    # uniform over the other lesions' rows -> P(j) = mean over i outside g_j of 1 / (n - |g_i|)
    angle = np.linspace(0.1, 1.5, n)
    lesion_a = np.stack([np.cos(angle), np.sin(angle)], 1)
    _, non_a = similarity_samples(
        np.tile([1.0, 0.0], (n, 1)), lesion_a, groups=groups, n_negative=40000, seed=1
    )
    j = np.abs(non_a[:, None] - np.cos(angle)[None]).argmin(1)
    size = np.bincount(groups)[groups]
    want = np.array([np.sum((groups != groups[k]) / (n - size)) / n for k in range(n)])
    np.testing.assert_allclose(np.bincount(j, minlength=n) / len(j), want, atol=0.01)
    assert len(similarity_samples(image, lesion, groups=np.zeros(n, int))[1]) == 0


def test_pair_matching_groups_cases_of_one_lesion(tmp_path):
    """Two cases of one lesion: the other case's clinical image is a match, not a tie."""
    from slimp_cli.eval.pair_matching import chance_metrics, run_pair_matching

    lid = np.array([0, 0, 1, 2, 3, 3, 4])
    per_lesion = np.random.default_rng(2).normal(size=(5, 8))
    derm = per_lesion[lid]
    both = np.ones((len(lid), 2), np.int8)
    store = _lesion_store(
        tmp_path / "pm.h5",
        lesion_id=lid,
        features={"derm_mm": derm, "clinic_mm": derm, "image": np.hstack([derm, derm])},
        modalities=both,
    )
    rep = run_pair_matching(store, device="cpu")
    assert rep["pair_matching"]["Acc@1"] == 1.0 and rep["pair_matching"]["mean_rank"] == 1.0
    # chance with m relevant of n = 7: (n + 1) / (m + 1); P(hit in top 1) = m / n
    m = np.array([2, 2, 1, 1, 2, 2, 1])
    assert rep["chance"]["mean_rank"] == pytest.approx(np.mean(8 / (m + 1)))
    assert rep["chance"]["Acc@1"] == pytest.approx(np.mean(m / 7))
    one = chance_metrics(np.ones(10, int), 10)
    assert one == pytest.approx({"Acc@1": 0.1, "Acc@5": 0.5, "mean_rank": 5.5, "n": 10})


def test_chance_metrics_against_simulation():
    from slimp_cli.eval.pair_matching import chance_metrics

    rng = np.random.default_rng(0)
    n, m = 12, 3
    ranks = np.array([rng.permutation(n)[:m].min() + 1 for _ in range(40000)])
    got = chance_metrics(np.array([m]), n)
    assert got["Acc@1"] == pytest.approx(np.mean(ranks <= 1), abs=0.01)
    assert got["Acc@5"] == pytest.approx(np.mean(ranks <= 5), abs=0.01)
    assert got["mean_rank"] == pytest.approx(ranks.mean(), abs=0.02)
