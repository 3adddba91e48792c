"""SM3 (`pretrain --method sm3`) end to end on the generated paired cohort and on real Derm7pt.

Runs use the local tiny CNN (`resnet_test`, 32 px: the small-image stem by default) on one CPU
thread. Measured (seed 0, 100 steps, B = 16 cases, sep_sep; first / last 5 steps): total loss
20.4 -> 4.1, L_mm 15.0 -> 2.8 (chance 2 log 31 = 6.9); pair matching over the 63 paired
cases: mean rank 2.5 (chance 32), Acc@1 0.40 (0.016), Acc@5 0.95 (0.08). With the standard
stem the same run gave mean rank 6.0, Acc@1 0.18, Acc@5 0.56; trained on shuffled pairs
instead, mean rank 37.8, Acc@5 0.0; sep_shared: mean rank 8.1, Acc@5 0.40; concat (no
cross-modal space): mean rank 34.6.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval.multilabel import CRITERIA as CRITERIA_NAMES
from slimp_cli.eval.pair_matching import run_pair_matching
from slimp_cli.features.embed import embed
from slimp_cli.features.store import FeatureStore
from slimp_cli.models.runs import load_run, read_config, read_metrics
from slimp_cli.train import pretrain
from slimp_cli.train.session import resolve_configs
from slimp_cli.train.sm3 import sm3_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_SM3 = dict(image_model="resnet_test", img_size=32, proj_dim=16, label_dim=32)
SHORT = dict(
    method="sm3",
    holdout=0.0,  # a mechanism test: every case trains (the counts below assume all 64)
    augment_recipe="light",  # the defaults' SimCLR views: test_defaults_learn_to_match_pairs
    patients_per_batch=16,
    epochs=25,
    lr=1e-2,
    warmup_steps=5,
    workers=0,
    device="cpu",
    log_every=1,
)


@pytest.fixture(scope="module")
def sm3_run(paired_shards, tmp_path_factory):
    torch.set_num_threads(1)
    return pretrain(
        paired_shards, tmp_path_factory.mktemp("sm3") / "run", model=TINY_SM3, train=SHORT
    )


def test_recipe_follows_image_weights_and_given_options_win():
    """Stage 1 from ImageNet weights: the paper's recipe (lr 1e-6, standard SimCLR views); from
    random weights: the from-scratch one (lr 1e-3, mild views); both without warm-up; stage 2: the paper's with the official tau 1. Values written
    out here, not read from the module."""
    model_d, train_d = sm3_defaults({"method": "sm3"}, None)
    model, train = resolve_configs(
        {}, {"method": "sm3"}, saved=None, train_defaults=train_d, model_defaults=model_d
    )
    assert (model.variant, model.image_model, model.img_size) == ("sm3", "resnet50", 224)
    assert (model.fusion, model.proj_dim, model.label_dim) == ("sep_sep", 128, 512)
    assert (train.patients_per_batch, train.epochs, train.weight_decay) == (96, 400, 0.01)
    assert (train.lr, train.temperature, train.warmup_steps) == (1e-3, 0.1, 0)
    assert train.augment and train.augment_recipe == "mild"
    _, paper = sm3_defaults({"method": "sm3"}, None, {"image_weights": "r50.pth"})
    assert paper["lr"] == 1e-6 and paper["epochs"] == 400 and paper["augment_recipe"] == "simclr"
    assert paper["warmup_steps"] == 0
    _, given = resolve_configs(
        {"image_weights": "r50.pth"},
        {"method": "sm3", "lr": 3e-4, "augment_recipe": "light"},
        saved=None,
        train_defaults=paper,
        model_defaults=model_d,
    )
    assert given.lr == 3e-4 and given.augment_recipe == "light"  # given options win
    assert given.epochs == 400 and given.patients_per_batch == 96
    _, stage2 = sm3_defaults({"method": "sm3", "stage": "multilabel"}, None)
    assert stage2 == {
        "patients_per_batch": 256,
        "lr": 1e-4,
        "epochs": 150,
        "weight_decay": 0.01,
        "temperature": 1.0,
        "augment": True,
        "augment_recipe": "light",
    }
    assert sm3_defaults({"method": "slimp"}, None) == (None, None)


@pytest.mark.parametrize(
    ("model", "stem"),
    [
        ({}, "standard"),  # resnet50 at 224 px
        ({"image_model": "resnet18", "img_size": 32}, "small"),
        ({"image_model": "resnet18", "img_size": 64}, "small"),
        ({"image_model": "resnet18", "img_size": 96}, "standard"),
        ({"image_model": "resnet_test", "img_size": 32}, "small"),
        ({"image_model": "resnet18", "img_size": 32, "image_weights": "r18.pth"}, "standard"),
        ({"image_model": "convnext_atto", "img_size": 32}, "standard"),  # no ResNet stem
        ({"image_model": "resnet18", "img_size": 32, "cnn_stem": "standard"}, "standard"),
        ({"image_model": "resnet18", "img_size": 224, "cnn_stem": "small"}, "small"),
    ],
)
def test_resnet_branches_from_random_weights_get_the_small_image_stem_at_small_inputs(model, stem):
    """SimCLR's CIFAR-10 stem is SM3's default from random weights at inputs of <= 64 px for
    ResNet-family branches; a given --cnn-stem wins; stage 2 sets none (its --init run's)."""
    model_d, train_d = sm3_defaults({"method": "sm3"}, None, model)
    cfg, _ = resolve_configs(
        model, {"method": "sm3"}, saved=None, train_defaults=train_d, model_defaults=model_d
    )
    assert cfg.cnn_stem == stem
    stage2, _ = sm3_defaults({"method": "sm3", "stage": "multilabel"}, None, model)
    assert "cnn_stem" not in stage2


def test_short_run_lowers_the_loss_and_matches_pairs(sm3_run, paired_shards, tmp_path, run_cli):
    metrics = read_metrics(sm3_run)
    assert len(metrics) == 100  # 64 cases / 16 = 4 steps per epoch, 25 epochs
    loss = np.array([m["loss"] for m in metrics])
    mm = np.array([m["loss_mm"] for m in metrics])
    assert loss[-5:].mean() < 0.6 * loss[:5].mean()
    assert mm[-5:].mean() < 2 * math.log(2 * 16 - 1)  # below chance (eq. 4: 2 log(2n - 1))
    assert {"loss_derm", "loss_clinic", "paired", "unpaired"} <= set(metrics[0])
    # 1 of the 64 cases has no clinical image: counted per step, averaged over the log interval
    assert sum(m["unpaired"] for m in metrics[:4]) == 1 and all(m["paired"] <= 16 for m in metrics)
    cfg = read_config(sm3_run)
    assert cfg["variant"] == "sm3" and cfg["train"]["method"] == "sm3"
    assert cfg["sm3"]["paired_cases"] == 63 and cfg["sm3"]["unpaired_cases"] == 1
    assert not any(n.startswith("label_proj") for n in cfg["trainable"])  # stage 2's modules
    store = tmp_path / "sm3.h5"
    res = run_cli("embed", sm3_run, paired_shards, "--out", store, "--device", "cpu")
    assert res.exit_code == 0, res.output
    with FeatureStore.open(store) as st:
        assert st.n == 64 and st.variant == "sm3"  # one row per case
        assert st.config["sm3"] == {"stage": "multimodal", "probe_features": "image"}
        assert st.dims == {"image": 128, "derm": 64, "clinic": 64, "derm_mm": 16, "clinic_mm": 16}
        present, names = st.modalities
        assert names == ["dermoscopic", "clinical"] and present.sum(0).tolist() == [64, 63]
        image, derm, clinic = st.block("image"), st.block("derm"), st.block("clinic")
        assert np.array_equal(image, np.concatenate([derm, clinic], 1))
        assert not clinic[~present[:, 1]].any()  # a missing modality's features are zeros
    res = run_cli("retrieve", store, "--pair-matching", "--json", tmp_path / "pm.json")
    assert res.exit_code == 0, res.output
    assert "pair matching over 63 cases" in res.stdout and "Acc@5" in res.stdout
    report = json.loads((tmp_path / "pm.json").read_text())
    pm, chance = report["pair_matching"], report["chance"]
    assert set(pm) == {"Acc@1", "Acc@5", "mean_rank", "n"} and pm["n"] == 63
    assert report["features"] == ["derm_mm", "clinic_mm"]
    assert pm["mean_rank"] < 0.2 * chance["mean_rank"]  # measured 2.5 vs 32
    assert pm["Acc@5"] > 5 * chance["Acc@5"]  # measured 0.95 vs 0.08


# The acceptance run (`slimp synth OUT --paired --patients 60 --seed 0`, ingest,
# `pretrain --method sm3 --image-model resnet18 --input-size 32 --max-steps 40
# --patients-per-batch 16`, embed, `retrieve --pair-matching`) made small: the tiny CNN on
# 32 px images and more steps, every training option at the recipe's default. Measured
# (recipe `scratch`: mild views, no warm-up, the small-image stem): Acc@1 0.17 (chance
# 0.017), Acc@5 0.41 (0.085), mean rank 9.8 (30); shuffled pairs 0.017, 0.05, 24.5. With the
# standard stem the same run gave 0.07, 0.29, 12.1 at twice the steps.
ACCEPT_STEPS = 120


def _defaults_pair_matching(run_slimp, shards, eval_shards, out) -> dict:
    """pretrain (recipe defaults) -> embed `eval_shards` -> retrieve --pair-matching, through
    the installed executable; returns the JSON report and pretrain's stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run, store, report = out / "run", out / "store.h5", out / "pm.json"
    steps = [
        ("pretrain", shards, "--out", run, "--method", "sm3", "--image-model", "resnet_test",
         "--input-size", "32", "--patients-per-batch", "16", "--max-steps", ACCEPT_STEPS,
         "--workers", "0", "--device", "cpu", "--no-progress"),
        ("embed", run, eval_shards, "--out", store, "--device", "cpu"),
        ("retrieve", store, "--pair-matching", "--json", report),
    ]  # fmt: skip
    stderr = []
    for args in steps:
        res = run_slimp(*args, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        stderr.append(res.stderr)
    return {**json.loads(report.read_text()), "pretrain_stderr": stderr[0]}


def test_defaults_learn_to_match_pairs_and_shuffled_pairs_stay_at_chance(run_slimp, tmp_path):
    """SM3 at its defaults (from random weights: the from-scratch recipe, SimCLR views) learns
    which clinical image belongs to which dermoscopic one; trained on a copy whose clinical
    images were shuffled across cases and evaluated on the true pairs, it stays at chance."""
    cohort, shards = tmp_path / "cohort", tmp_path / "shards"
    res = run_slimp("synth", cohort, "--paired", "--patients", "60", "--seed", "0")
    assert res.returncode == 0, res.stderr
    assert run_slimp("ingest", "synth", cohort, shards, "--image-size", "32").returncode == 0
    shuffled = tmp_path / "shuffled"
    shutil.copytree(cohort, shuffled)
    table = pd.read_csv(shuffled / "metadata.csv", dtype=str, keep_default_na=False)
    table["clinic"] = table["clinic"].to_numpy()[np.random.default_rng(0).permutation(len(table))]
    table.to_csv(shuffled / "metadata.csv", index=False)
    res = run_slimp("ingest", "synth", shuffled, tmp_path / "shuffled-shards", "--image-size", "32")
    assert res.returncode == 0, res.stderr

    (tmp_path / "true").mkdir()
    true = _defaults_pair_matching(run_slimp, shards, shards, tmp_path / "true")
    assert true["pretrain_stderr"].count("recipe 'scratch'") == 1  # announced once
    pm, chance = true["pair_matching"], true["chance"]
    assert pm["n"] == 59 and chance["Acc@1"] == pytest.approx(1 / 59)
    assert pm["Acc@1"] >= 0.1  # the bar (6 of 59)
    assert pm["mean_rank"] < 0.5 * chance["mean_rank"]
    assert pm["Acc@5"] > 3 * chance["Acc@5"]

    (tmp_path / "shuf").mkdir()
    shuf = _defaults_pair_matching(
        run_slimp, tmp_path / "shuffled-shards", shards, tmp_path / "shuf"
    )
    pm = shuf["pair_matching"]
    # Top-k stays at chance without the pairs. The mean rank is no chance-level claim: a
    # model trained on shuffled pairs is not a uniform random ranker (30 +- 2.2 here), and its
    # mean rank on the true pairs has landed anywhere from 17.2 to 43.6 as float rounding
    # changed (docs/method.md, SM3), so it is only held off half of chance.
    assert pm["Acc@5"] < 2 * chance["Acc@5"] and pm["Acc@1"] < 0.1
    assert true["pair_matching"]["Acc@5"] > 1.5 * pm["Acc@5"]
    assert pm["mean_rank"] > 0.5 * chance["mean_rank"]


RESUME = dict(SHORT, epochs=2, max_steps=None, lr=1e-3, warmup_steps=2)


@pytest.mark.parametrize("fusion", ["sep_sep", "concat"])
def test_resume_is_exact(paired_shards, tmp_path, fusion):
    model = dict(TINY_SM3, fusion=fusion)
    full = pretrain(paired_shards, tmp_path / "full", model=model, train=dict(RESUME, max_steps=7))
    part = pretrain(paired_shards, tmp_path / "part", model=model, train=dict(RESUME, max_steps=3))
    pretrain(paired_shards, part, train={"max_steps": 7}, resume=True)
    a = torch.load(full / "checkpoint-last.pt", weights_only=True)
    b = torch.load(part / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 7
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [m["loss"] for m in read_metrics(full)] == [m["loss"] for m in read_metrics(part)]


def test_real_derm7pt_run_skips_the_cross_modal_term(derm7pt_shards, tmp_path, capsys):
    """The shared Derm7pt subset has no clinical file: the run trains the dermoscopic branch
    (L_derm) alone, says so once and counts the unpaired cases in metrics.jsonl."""
    run = pretrain(
        derm7pt_shards,
        tmp_path / "run",
        model=TINY_SM3,
        train=dict(SHORT, patients_per_batch=32, max_steps=3),
    )
    err = capsys.readouterr().err
    assert err.count("657 of 657 cases lack a clinical or dermoscopic image") == 1
    assert "no case has both, so L_mm is 0 throughout" in err
    metrics = read_metrics(run)
    assert len(metrics) == 3
    for m in metrics:
        assert m["unpaired"] == 32 and m["paired"] == 0
        assert m["loss_mm"] == 0.0 and m["loss_clinic"] == 0.0
        assert m["loss"] == pytest.approx(m["loss_derm"]) and m["loss_derm"] > 0
    assert load_run(run).model.variant == "sm3"


def test_bad_sm3_input(pad_shards, paired_shards, tmp_path, write_store):
    with pytest.raises(SlimpError, match="no image records a modality"):
        pretrain(pad_shards, tmp_path / "a", model=TINY_SM3, train=dict(SHORT, max_steps=1))
    with pytest.raises(SlimpError, match="--variant nested is SLIMP's"):
        pretrain(paired_shards, tmp_path / "b", model=dict(TINY_SM3, variant="nested"), train=SHORT)
    with pytest.raises(SlimpError, match="give it with --init"):
        pretrain(paired_shards, tmp_path / "c", train=dict(SHORT, stage="multilabel"))
    with pytest.raises(SlimpError, match="--stage and --init are options of --method sm3"):
        pretrain(paired_shards, tmp_path / "d", train=dict(stage="multilabel"))
    with pytest.raises(SlimpError, match="unknown fusion"):
        pretrain(paired_shards, tmp_path / "e", model=dict(TINY_SM3, fusion="sum"), train=SHORT)
    slimp_store = write_store(
        tmp_path / "slimp.h5",
        features={"image": np.ones((4, 2), np.float32)},
        patient_id=np.arange(4),
        label=np.array([0, 1, 0, 1]),
    )
    with pytest.raises(SlimpError, match="not an SM3 store"):
        run_pair_matching(slimp_store)


STAGE2 = dict(
    method="sm3",
    stage="multilabel",
    holdout=0.0,  # every case in the bank: the step counts below assume all 64
    patients_per_batch=16,
    epochs=2,
    lr=1e-3,
    warmup_steps=2,
    workers=0,
    device="cpu",
    log_every=1,
)


def test_multilabel_stage_trains_on_pseudo_labels_and_resumes_exactly(
    sm3_run, paired_shards, tmp_path, run_cli
):
    """Stage 2 from the stage-1 run: only the label modules train; the memory bank's k-means
    pseudo-labels (K per label) and the bank itself are checkpointed, so stopping inside
    epoch 1 and at its end (4 steps per epoch) and resuming gives the uninterrupted weights."""
    train = dict(STAGE2, init=str(sm3_run))
    full = pretrain(paired_shards, tmp_path / "full", train=dict(train, max_steps=8))
    for k in (3, 4):
        part = pretrain(paired_shards, tmp_path / f"part{k}", train=dict(train, max_steps=k))
        pretrain(paired_shards, part, train={"max_steps": 8}, resume=True)
        a = torch.load(full / "checkpoint-last.pt", weights_only=True)
        b = torch.load(part / "checkpoint-last.pt", weights_only=True)
        assert a["step"] == b["step"] == 8
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), key
        for key in ("bank", "labels"):
            assert torch.equal(a["extra"][key], b["extra"][key]), key
    cfg = read_config(full)
    assert cfg["train"]["stage"] == "multilabel" and cfg["model"] == read_config(sm3_run)["model"]
    assert cfg["init"]["sha256"] and cfg["sm3"]["stage"] == "multilabel"
    trainable = cfg["trainable"]
    assert trainable and all(
        n.startswith(("label_proj", "relation", "prototypes")) for n in trainable
    )
    stage1 = torch.load(sm3_run / "checkpoint-last.pt", weights_only=True)["model"]
    for key, value in a["model"].items():  # the branches (and their BN statistics) are frozen
        if key.startswith(("derm_encoder", "clinic_encoder")):
            assert torch.equal(value, stage1[key]), key
    labels = a["extra"]["labels"]
    assert labels.shape == (64, 8) and a["extra"]["labels_epoch"] == 1
    # K per label is Derm7pt's number of grouped classes (the paper's, written out here): the
    # epoch's k-means made exactly K clusters, every one of them given to some case, and the
    # label's classification head has one row per cluster
    for k, size in enumerate((5, 3, 2, 3, 3, 3, 3, 2)):
        assert sorted(labels[:, k].unique().tolist()) == list(range(size)), k
        assert a["model"][f"prototypes.{k}.weight"].shape == (size, 32), k
    metrics = read_metrics(full)
    assert len(metrics) == 8 and all(np.isfinite(m["loss"]) for m in metrics)
    # stage-2 stores also hold the 8 label embeddings: the level Table II's MLSSL rows probe
    store = embed(full, paired_shards, tmp_path / "s.h5", device="cpu")
    with FeatureStore.open(store) as st:
        assert st.dims["labels"] == 8 * 32 and st.dims["image"] == 128
        assert st.config["sm3"] == {"stage": "multilabel", "probe_features": "labels"}
        first = st.block("labels")[:, :32]
    # not normalised (the official run's label embeddings): LayerNorm'd, about sqrt(32) long
    assert np.linalg.norm(first, axis=1).min() > 2
    res = run_cli(
        "probe", store, "--task", "derm7pt-multilabel", "--features", "labels", "--split",
        "random", "--json", tmp_path / "ml.json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ml.json").read_text())["results"][0]["features"] == ["labels"]


def test_multilabel_probe_on_real_derm7pt(derm7pt_shards, tmp_path, run_cli):
    """A short SM3 run on the real subset, embedded, probed: the per-label Table I and its JSON."""
    run = pretrain(
        derm7pt_shards,
        tmp_path / "run",
        model=TINY_SM3,
        train=dict(SHORT, patients_per_batch=64, max_steps=2),
    )
    store = embed(run, derm7pt_shards, tmp_path / "derm.h5", batch_size=128, device="cpu")
    res = run_cli(
        "probe",
        store,
        "--task",
        "derm7pt-multilabel",
        "--method",
        "linear",
        "--seeds",
        "0,1",
        "--json",
        tmp_path / "ml.json",
    )
    assert res.exit_code == 0, res.output
    for word in ("SM3 Table I layout", "BWV", "DIAG", "MEL", "AVG", "Sens.", "Spec.", "Prec."):
        assert word in res.stdout, word
    report = json.loads((tmp_path / "ml.json").read_text())
    table = report["table"]["linear"]
    assert table["columns"][-2:] == ["DIAG", "AVG"]
    assert all(
        v is not None and 0 <= v <= 1
        for row in ("AUC", "Sens.", "Spec.", "Prec.")
        for v in table[row]
    )  # every label has its reported class in the subset
    targets = {r["target"] for r in report["results"]}
    assert targets == {"diagnosis", *CRITERIA_NAMES, "mean"}
    assert report["results"][0]["features"] == ["image"]  # concat(derm, clinic)


def test_held_out_cases_are_never_drawn_and_the_store_marks_them(
    paired_shards, tmp_path, monkeypatch
):
    """The held-out protocol reaches SM3: its case sampler skips held-out patients, and the
    store's rows carry the split."""
    from slimp_cli.data.holdout import read_holdout
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.train import data as train_data

    seen = []
    original = train_data.CaseDataset.__getitem__

    def recording(self, item):
        seen.append(self.index.patient(self.cases[item.patient].patient).patient_id)
        return original(self, item)

    monkeypatch.setattr(train_data.CaseDataset, "__getitem__", recording)
    run = pretrain(
        paired_shards,
        tmp_path / "run",
        model=TINY_SM3,
        train=dict(SHORT, holdout=0.25, epochs=1, max_steps=3),
    )
    held = set(read_holdout(run).patient_ids)
    assert len(held) == 16 and seen and not set(seen) & held  # 25% of the 64 cases
    store = embed(run, paired_shards, tmp_path / "s.h5", batch_size=64, device="cpu")
    with FeatureStore.open(store) as st:
        assert set(st.patient_id[st.split == "holdout"]) == held
    assert len(ShardIndex.open(paired_shards)) == 64
