"""Patients held out of every training stage (slimp_cli.data.holdout and its use in train/embed/probe)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.holdout import Holdout, choose_holdout, read_holdout
from slimp_cli.data.shards import ShardIndex
from slimp_cli.eval.probe import run_probe
from slimp_cli.eval.retrieval import run_retrieval
from slimp_cli.features.embed import embed
from slimp_cli.features.store import FeatureStore
from slimp_cli.models.runs import load_run, read_config, read_metrics
from slimp_cli.train import TrainConfig, adapt, pretrain
from slimp_cli.train import data as train_data
from slimp_cli.train.distributed import DistInfo
from slimp_cli.train.loop import local_batches
from slimp_cli.train.session import split_patients

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)
FAST = dict(workers=0, device="cpu", log_every=1, lr=1e-3)


def test_choose_holdout_is_stratified_deterministic_and_order_free():
    ids = [f"p{i:03d}" for i in range(200)]
    positive = [i % 5 == 0 for i in range(200)]  # 40 positive patients
    a = choose_holdout(ids, positive, fraction=0.2, seed=3)
    b = choose_holdout(ids[::-1], positive[::-1], fraction=0.2, seed=3)
    assert a == b and a.fingerprint == b.fingerprint
    assert len(a.patient_ids) == 40
    held_pos = sum(positive[ids.index(p)] for p in a.patient_ids)
    assert held_pos == 8  # 20% of the 40 positive patients, exactly
    c = choose_holdout(ids, positive, fraction=0.2, seed=4)
    assert c.patient_ids != a.patient_ids and c.fingerprint != a.fingerprint
    assert choose_holdout(ids, positive, fraction=0.0, seed=0).patient_ids == ()
    with pytest.raises(SlimpError, match="--holdout 1.0"):
        choose_holdout(ids, positive, fraction=1.0, seed=0)
    with pytest.raises(SlimpError, match="at least one patient on each side"):
        choose_holdout(ids[:3], positive[:3], fraction=0.05, seed=0)
    d = a.to_dict()
    assert Holdout.from_dict(d) == a
    d["patient_ids"] = d["patient_ids"][1:]
    with pytest.raises(SlimpError, match="fingerprint"):
        Holdout.from_dict(d)


@pytest.fixture(scope="module")
def held_run(pad_shards, tmp_path_factory):
    """A 2-epoch run with 20% of the PAD patients held out; records every item the loader
    asks the dataset for (the batches it yields are built from them)."""
    seen = []
    original = train_data.PatientDataset.__getitem__

    def recording(self, item):
        seen.append(item)
        return original(self, item)

    train_data.PatientDataset.__getitem__ = recording
    try:
        out = tmp_path_factory.mktemp("held") / "run"
        pretrain(
            pad_shards,
            out,
            model=TINY,
            train=dict(FAST, holdout=0.2, patients_per_batch=64, lesions_per_patient=2, epochs=2),
        )
    finally:
        train_data.PatientDataset.__getitem__ = original
    return out, seen


def test_no_held_out_patient_is_ever_trained_on(held_run, pad_shards):
    run, seen = held_run
    holdout = read_holdout(run)
    index = ShardIndex.open(pad_shards)
    ids = [index.patient(i).patient_id for i in range(len(index))]
    assert len(holdout.patient_ids) == round(0.2 * 418) and holdout.fraction == 0.2
    cfg = read_config(run)
    assert cfg["holdout"]["fingerprint"] == holdout.fingerprint
    assert cfg["holdout"]["patients_held_out"] == len(holdout.patient_ids)
    trained = {ids[it.patient] for it in seen if it.aug_key[1] != train_data.VALIDATION_EPOCH}
    validated = {ids[it.patient] for it in seen if it.aug_key[1] == train_data.VALIDATION_EPOCH}
    assert trained and not trained & set(holdout.patient_ids)
    assert validated == set(holdout.patient_ids)  # the validation loss covers every one
    # the sampler the training code builds (the resume path: holdout.json re-read by
    # split_patients, batches by loop.local_batches), its plan of every epoch checked directly
    train = TrainConfig.from_dict(cfg["train"])
    patients = split_patients(index, train, run_dir=run, saved=cfg, info=DistInfo())
    model = load_run(run).model
    batches, _, val_plan = local_batches(
        model, patients.schema, index, patients, train, DistInfo(), pin_memory=False
    )
    held = set(holdout.patient_ids)
    planned = set()
    for epoch in range(3):
        planned |= {ids[it.patient] for step in batches.sampler.plan(epoch) for it in step}
    assert planned and not planned & held
    assert planned | held == set(ids)  # every other patient trains (3 epochs cover them)
    assert {ids[it.patient] for batch in val_plan for it in batch} == held
    # one validation row per epoch
    val = read_metrics(run, kind="validation")
    assert [r["epoch"] for r in val] == [1, 2]
    assert all(np.isfinite(r["val_loss"]) and "val_loss_patient" in r for r in val)


def test_store_probe_and_retrieve_use_the_held_out_patients(held_run, pad_shards, tmp_path):
    run, _ = held_run
    holdout = read_holdout(run)
    store = embed(run, pad_shards, tmp_path / "pad.h5", batch_size=128)
    with FeatureStore.open(store) as st:
        sides, pids = st.split, st.patient_id
        assert st.split_fingerprint == holdout.fingerprint
    assert set(pids[sides == "holdout"]) == set(holdout.patient_ids)
    assert not set(pids[sides == "train"]) & set(holdout.patient_ids)
    report = run_probe(store, seeds=(0, 1), methods=("linear",), baseline=True, device="cpu")
    assert report["split"]["kind"] == "holdout"
    assert report["split"]["holdout_fingerprint"] == holdout.fingerprint
    assert report["split"]["test_rows_seen_in_pretraining"] == 0
    assert {r["method"] for r in report["results"]} == {"linear", "baseline-logreg", "baseline-gbm"}
    assert all(r["split"] == "holdout" for r in report["results"])
    # a fixed split: the seeds vary only the classifier, and the linear probe is deterministic
    assert report["results"][0]["metrics"]["auc"]["std"] == pytest.approx(0.0, abs=1e-12)
    # the patient split draws its test rows among patients pre-training saw, and says so
    seen = run_probe(store, split="patient", seeds=(0,), methods=("linear",), device="cpu")
    assert seen["split"]["test_rows_seen_in_pretraining"] > 0
    assert any("seen in pre-training" in w for w in seen["warnings"])
    ret = run_retrieval(store, device="cpu", n_negative=100)
    assert ret["split"]["kind"] == "holdout"
    assert ret["n_queries"] == int(np.sum(sides == "holdout"))


def test_adapt_draws_its_own_split_on_the_target(held_run, derm7pt_shards, tmp_path):
    run, _ = held_run
    out = adapt(
        run,
        derm7pt_shards,
        tmp_path / "adapted",
        train=dict(FAST, holdout=0.1, patients_per_batch=32, lesions_per_patient=1, max_steps=2),
    )
    target = read_holdout(out)
    index = ShardIndex.open(derm7pt_shards)
    derm_ids = {index.patient(i).patient_id for i in range(len(index))}
    assert set(target.patient_ids) <= derm_ids and len(target.patient_ids) == round(0.1 * 657)
    assert target.fingerprint != read_holdout(run).fingerprint
    cfg = read_config(out)
    assert cfg["holdout"]["fingerprint"] == target.fingerprint
    assert cfg["train"]["positive_sampling"] is False  # class-agnostic target stage (App. D)


def test_holdout_zero_warns_and_marks_every_row_seen(pad_shards, tmp_path, capsys):
    out = pretrain(
        pad_shards,
        tmp_path / "all",
        model=TINY,
        train=dict(FAST, holdout=0.0, patients_per_batch=16, lesions_per_patient=2, max_steps=2),
    )
    assert "--holdout 0: every patient is trained on" in capsys.readouterr().err
    assert json.loads((out / "holdout.json").read_text())["patient_ids"] == []
    store = embed(out, pad_shards, tmp_path / "all.h5", batch_size=256)
    with FeatureStore.open(store) as st:
        assert set(st.split) == {"train"}
    report = run_probe(store, seeds=(0,), methods=("linear",), device="cpu")
    assert report["split"]["kind"] == "random"  # no held-out rows to default to
    assert report["split"]["test_rows_seen_in_pretraining"] > 0


def test_random_split_keeps_the_images_of_a_lesion_together(pad_store):
    from slimp_cli.eval.splits import make_split

    with FeatureStore.open(pad_store) as st:
        lesions, pids, y = st.lesion_id, st.patient_id, st.malignant.astype(int)
    assert len(np.unique(lesions)) < len(lesions)  # PAD has several images of some lesions
    for seed in range(5):
        train, test = make_split("random", y, pids, seed=seed, lesions=lesions)
        assert not set(lesions[train]) & set(lesions[test])
        assert 0.05 < len(test) / len(y) < 0.2
