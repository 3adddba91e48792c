"""Continual pre-training (`adapt`): new tabular inputs, frozen layers untouched, tuned ones move."""

from __future__ import annotations

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.runs import load_run, read_config, read_metrics
from slimp_cli.train import adapt, adapt_run, pretrain
from slimp_cli.train.adapt import prepare_model
from slimp_cli.train.loop import set_train_mode
from slimp_cli.train.session import seed_everything

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)
FAST = dict(workers=0, device="cpu", log_every=1)
ADAPT = dict(
    FAST,
    patients_per_batch=16,
    lesions_per_patient=2,
    epochs=1,
    max_steps=8,
    warmup_steps=2,
    lr=1e-3,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pad_checkpoint(pad_shards, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("adapt_src") / "pad"
    return pretrain(
        pad_shards,
        out,
        model=dict(TINY, tab_dropout=0.1),
        train=dict(FAST, patients_per_batch=8, lesions_per_patient=4, max_steps=15, lr=1e-3),
    )


def test_adapt_to_derm7pt_freezes_all_but_the_embeddings(
    pad_checkpoint, derm7pt_shards, tmp_path, capsys
):
    from slimp_cli.data.shards import ShardIndex

    # The adapted model before training (the same seed draws the same new input layers).
    seed_everything(0)
    initial, _ = prepare_model(
        pad_checkpoint, ShardIndex.open(derm7pt_shards).schema, tune="embeddings"
    )
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    result = adapt_run(pad_checkpoint, derm7pt_shards, tmp_path / "adapted", train=ADAPT)
    assert "no patient-level features" in capsys.readouterr().err

    cfg = read_config(result.run_dir)
    assert cfg["kind"] == "adapt" and cfg["tune"] == "embeddings" and cfg["variant"] == "flat"
    assert cfg["train"]["max_steps"] == 8 and len(cfg["source"]["sha256"]) == 64
    trainable = set(cfg["trainable"])
    assert any(n.startswith("image_encoder.patch_embed.") for n in trainable)
    assert any(n.startswith("lesion_encoder.inputs.") for n in trainable)
    assert all(
        n.startswith(
            ("image_encoder.patch_embed.", "lesion_encoder.inputs.", "lesion_encoder.cls_token")
        )
        for n in trainable
    )
    assert not hasattr(result.model, "patient_encoder")  # nested -> flat

    _run = load_run(result.run_dir)  # rebuilt from config.json

    adapted, _, schema = _run.model, _run.config, _run.schema
    assert schema.name == ShardIndex.open(derm7pt_shards).schema.name
    after = adapted.state_dict()
    assert set(after) == set(before)
    source = load_run(pad_checkpoint).model.state_dict()
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), f"tuned {name} did not change"
        else:
            assert torch.equal(value, before[name]), f"frozen {name} changed"
            assert torch.equal(value, source[name]), f"frozen {name} differs from the source"
    # the metadata input layers were rebuilt for Derm7pt's columns
    derm_cols = len(schema.lesion_features)
    inputs = adapted.lesion_encoder.inputs
    assert len(inputs.cardinalities) + inputs.n_numerical == derm_cols


def test_frozen_modules_run_in_eval_mode(pad_checkpoint, derm7pt_shards):
    from slimp_cli.data.shards import ShardIndex

    model, _ = prepare_model(
        pad_checkpoint, ShardIndex.open(derm7pt_shards).schema, tune="embeddings"
    )
    set_train_mode(model)
    assert model.image_encoder.patch_embed.training
    assert not model.image_encoder.blocks[0].training
    assert not model.lesion_encoder.transformer.training  # its dropout is off
    assert model.lesion_encoder.inputs.training


def test_adapt_tune_all_and_pad_to_pad(pad_checkpoint, pad_shards, derm7pt_shards, tmp_path):
    run = adapt(
        pad_checkpoint, derm7pt_shards, tmp_path / "all", tune="all", train=dict(ADAPT, max_steps=2)
    )
    cfg = read_config(run)
    _run = load_run(run)
    model, _, _ = _run.model, _run.config, _run.schema
    assert cfg["tune"] == "all" and len(cfg["trainable"]) == len(list(model.parameters()))
    # nested -> nested when the target has patient features; paper default B = 64
    run = adapt(
        pad_checkpoint / "checkpoint-last.pt",
        pad_shards,
        tmp_path / "nested",
        train=dict(FAST, lesions_per_patient=2, max_steps=2),
    )
    cfg = read_config(run)
    assert cfg["variant"] == "nested" and cfg["train"]["patients_per_batch"] == 64
    assert any(n.startswith("patient_encoder.inputs.") for n in cfg["trainable"])
    assert len(read_metrics(run)) == 2
    with pytest.raises(SlimpError, match="unknown --tune"):
        adapt(pad_checkpoint, pad_shards, tmp_path / "bad", tune="heads", train=ADAPT)


def test_adapt_resume(pad_checkpoint, derm7pt_shards, tmp_path):
    full = adapt(pad_checkpoint, derm7pt_shards, tmp_path / "full", train=ADAPT)
    part = adapt(pad_checkpoint, derm7pt_shards, tmp_path / "part", train=dict(ADAPT, max_steps=3))
    adapt(pad_checkpoint, derm7pt_shards, part, train={"max_steps": 8}, resume=True)
    a = torch.load(full / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoint-last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
