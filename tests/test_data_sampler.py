"""Patient batch sampler, dataset and collate (slimp_cli.train.data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import TabularBatch
from slimp_cli.data.transforms import Preprocess
from slimp_cli.models import MetadataInputs
from slimp_cli.train.data import (
    PatientBatchSampler,
    PatientDataset,
    PatientInfo,
    choose_lesions,
    collate,
    make_loader,
    patient_infos,
)


def _infos(n=23, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 12))
        mal = tuple(j for j in range(k) if rng.random() < 0.2)
        out.append(PatientInfo(k, mal))
    return out


def _keys(plan):
    return [[(it.patient, it.lesions, it.aug_key) for it in step] for step in plan]


def test_plan_is_a_pure_function_of_seed_and_epoch():
    a = PatientBatchSampler(_infos(), patients_per_batch=4, lesions_per_patient=3, seed=7)
    b = PatientBatchSampler(_infos(), patients_per_batch=4, lesions_per_patient=3, seed=7)
    assert _keys(a.plan(3)) == _keys(b.plan(3))
    assert _keys(a.plan(3)) != _keys(a.plan(4))  # re-sampled every epoch
    c = PatientBatchSampler(_infos(), patients_per_batch=4, lesions_per_patient=3, seed=8)
    assert _keys(a.plan(0)) != _keys(c.plan(0))
    assert len(a) == 23 // 4 == len(a.plan(0))
    # every step: B distinct patients, at most N lesions each, sorted and distinct
    for step in a.plan(0):
        assert len({it.patient for it in step}) == 4
        for it in step:
            assert 1 <= len(it.lesions) <= 3 and list(it.lesions) == sorted(set(it.lesions))


def test_set_epoch_and_start_step_replay_the_rest_of_an_epoch():
    s = PatientBatchSampler(_infos(), patients_per_batch=4, lesions_per_patient=3, seed=1)
    full = _keys(s.plan(2))
    s.set_epoch(2, start_step=3)
    assert len(s) == len(full) - 3
    assert _keys(list(s)) == full[3:]
    assert _keys(list(s)) == full  # start_step applies once


def test_positive_sampling_keeps_malignant_lesions():
    info = PatientInfo(50, (3, 17, 41))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        chosen = choose_lesions(info, 5, True, rng)
        assert {3, 17, 41} <= set(chosen) and len(chosen) == 5
    # more malignant lesions than N: N of them, all malignant, distinct and sorted; a random
    # N (not always the first ones)
    many = PatientInfo(10, tuple(range(8)))
    drawn = set()
    for seed in range(20):
        chosen = choose_lesions(many, 4, True, np.random.default_rng(seed))
        assert len(chosen) == 4 and list(chosen) == sorted(set(chosen))
        assert set(chosen) <= set(range(8))
        drawn.add(chosen)
    assert len(drawn) > 1
    # without positive sampling the malignant ones are sometimes left out
    missed = sum(
        not {3, 17, 41} <= set(choose_lesions(info, 5, False, np.random.default_rng(s)))
        for s in range(20)
    )
    assert missed > 10
    # few lesions: all of them
    assert choose_lesions(PatientInfo(3, ()), 5, True, np.random.default_rng(0)) == (0, 1, 2)


def test_ranks_take_disjoint_slices_of_the_global_batch():
    infos = _infos(40)
    one = PatientBatchSampler(infos, patients_per_batch=8, lesions_per_patient=3, seed=3)
    ranks = [
        PatientBatchSampler(
            infos, patients_per_batch=4, lesions_per_patient=3, seed=3, rank=r, world_size=2
        )
        for r in range(2)
    ]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    for s, global_step in enumerate(one.plan(1)):
        parts = [rk.plan(1)[s] for rk in ranks]
        assert not {it.patient for it in parts[0]} & {it.patient for it in parts[1]}
        # rank r's items are exactly positions [r*B, (r+1)*B) of the 1-process global batch
        assert [tuple(it) for it in parts[0] + parts[1]] == [tuple(it) for it in global_step]


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(
        SlimpError, match="data has 3 training patients but --patients-per-batch is 4; lower it"
    ):
        PatientBatchSampler(_infos(3), patients_per_batch=4, lesions_per_patient=2)
    with pytest.raises(SlimpError, match="x 2 processes"):
        PatientBatchSampler(_infos(5), patients_per_batch=4, lesions_per_patient=2, world_size=2)
    with pytest.raises(SlimpError, match="no patients"):
        PatientBatchSampler([], patients_per_batch=1, lesions_per_patient=2)


def _dataset(index, variant, *, augment=False):
    """The dataset a `variant` model built on the index's schema reads."""
    return PatientDataset(
        index,
        inputs=MetadataInputs.build(variant, index.schema),
        preprocess=Preprocess(img_size=32),
        classes=index.schema.classes,
        augment=augment,
    )


def test_dataset_and_collate_on_pad(pad_shards):
    from slimp_cli.data.shards import ShardIndex

    index = ShardIndex.open(pad_shards)
    infos = patient_infos(index)
    assert len(infos) == 418 and sum(i.n_lesions for i in infos) == 531
    sampler = PatientBatchSampler(infos, patients_per_batch=6, lesions_per_patient=2, seed=0)
    step = sampler.plan(0)[0]
    for variant in ("nested", "flat", "image"):
        ds = _dataset(index, variant)
        batch = collate([ds[it] for it in step])
        n = sum(len(it.lesions) for it in step)
        assert batch["images"].shape == (n, 3, 32, 32)
        assert batch["patient_index"].tolist() == [
            q for q, it in enumerate(step) for _ in it.lesions
        ]
        assert batch["malignant"].shape == batch["label"].shape == (n,)
        assert set(batch["malignant"].tolist()) <= {0, 1}
        if variant == "image":
            assert batch["images2"].shape == batch["images"].shape
            assert not torch.equal(batch["images2"], batch["images"])  # two views
            assert "lesion_tab" not in batch
            continue
        tab = batch["lesion_tab"]
        assert isinstance(tab, TabularBatch) and len(tab) == n
        if variant == "nested":
            assert len(batch["patient_tab"]) == 6
            n_feats = len(index.schema.lesion_features)
        else:  # flat: patient + derived + lesion features per lesion
            assert "patient_tab" not in batch
            n_feats = len(index.schema.flat_features)
        assert tab.categorical.shape[1] + tab.numerical.shape[1] == n_feats
    # the same item gives the same sample (with augmentation too)
    ds = _dataset(index, "nested", augment=True)
    assert torch.equal(ds[step[0]]["images"], ds[step[0]]["images"])


def test_loader_with_workers_matches_main_process(pad_shards):
    from slimp_cli.data.shards import ShardIndex

    index = ShardIndex.open(pad_shards)
    ds = _dataset(index, "nested", augment=True)

    def batches(workers):
        sampler = PatientBatchSampler(
            patient_infos(index), patients_per_batch=50, lesions_per_patient=3, seed=5
        )
        sampler.set_epoch(1, start_step=5)
        loader = make_loader(ds, sampler, workers=workers, prefetch=2, pin_memory=False)
        return [b["images"] for b in loader]

    main, workers = batches(0), batches(2)
    assert len(main) == 418 // 50 - 5 == len(workers)
    assert all(torch.equal(a, b) for a, b in zip(main, workers))
