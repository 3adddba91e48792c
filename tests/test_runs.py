"""The run-dir contract (slimp_cli.models.runs): config.json, checkpoints, rebuild from config."""

from __future__ import annotations

import json
import shutil

import torch

from slimp_cli.data.holdout import read_holdout
from slimp_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from slimp_cli.models.runs import load_run, read_config, sha256_file


def test_run_dir_contract(trained_pad, pad_shards):
    run = trained_pad.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-best.pt",  # an epoch of lowest held-out loss finished within 100 steps
        "checkpoint-last.pt",
        "config.json",
        "holdout.json",
        "metrics.jsonl",
        "summary.csv",
    ]
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 100 and state["format"] == "slimp-checkpoint"
    cfg = read_config(run)
    assert cfg["variant"] == "nested" and cfg["kind"] == "pretrain"
    assert cfg["train"]["max_steps"] == 100 and cfg["model"]["image_model"] == "vit_test"
    assert cfg["schema"]["name"] == json.loads((pad_shards / "schema.json").read_text())["name"]
    assert cfg["data"]["patients"] == 418 and len(cfg["data"]["manifest_sha256"]) == 64
    assert len(cfg["trainable"]) == len(list(trained_pad.model.parameters()))
    assert cfg == state["config"]
    # the image model's own mean/std (the local test ViT has no timm config: ImageNet's)
    assert cfg["preprocess"] == {
        "img_size": 32,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    loaded = load_run(run)
    assert loaded.preprocess.to_dict() == cfg["preprocess"]
    assert loaded.checkpoint == run / "checkpoint-last.pt" and loaded.sha256 == sha256_file(
        loaded.checkpoint
    )


def test_a_timm_model_records_its_own_mean_std(pad_shards, tmp_path):
    from slimp_cli.models import build_model
    from slimp_cli.models.config import ModelConfig

    model = build_model(
        ModelConfig(variant="image", image_model="vit_base_patch16_clip_224", img_size=32), None
    )
    # CLIP-style ViTs expect OpenAI CLIP's statistics, not ImageNet's
    assert model.preprocess.mean != IMAGENET_MEAN
    assert tuple(model.preprocess.mean) == tuple(model.image_encoder.pretrained_cfg["mean"])


def test_model_rebuilt_from_config_gives_the_same_embeddings(trained_pad, pad_shards):
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.train.data import PatientDataset, PatientItem, collate

    _run = load_run(trained_pad.run_dir)

    model, cfg, schema = _run.model, _run.config, _run.schema
    # the data's own schema is recorded; the model encodes with the training patients' statistics
    index = ShardIndex.open(pad_shards)
    assert index.schema.fingerprint() == cfg["data"]["schema_fingerprint"]
    holdout = read_holdout(trained_pad.run_dir)
    train_rows = [
        index.patient(i) for i in range(len(index)) if index.patient(i).patient_id not in holdout
    ]
    expected = index.schema.with_statistics(
        [{**r.fields, **r.derived} for r in train_rows],
        [les["fields"] for r in train_rows for les in r.lesions],
    )
    assert schema.fingerprint() == expected.fingerprint() != index.schema.fingerprint()
    trained = trained_pad.model.eval()
    index = ShardIndex.open(pad_shards)
    ds = PatientDataset(index, inputs=model.inputs, preprocess=model.preprocess)
    items = [
        PatientItem(i, tuple(range(len(index.patient(i).lesions))), (0, 0, 0, i)) for i in range(6)
    ]
    batch = collate([ds[it] for it in items])
    with torch.no_grad():
        for enc, arg in (
            ("encode_image", batch["images"]),
            ("encode_lesion", batch["lesion_tab"]),
            ("encode_patient", batch["patient_tab"]),
        ):
            a, b = getattr(model, enc)(arg), getattr(trained, enc)(arg)
            assert torch.equal(a, b), enc
    # a lone checkpoint file (config copied inside) rebuilds it too
    lone = trained_pad.run_dir.parent / "lone.pt"
    shutil.copy(trained_pad.run_dir / "checkpoint-last.pt", lone)
    _run = load_run(lone)
    m2, _, _ = _run.model, _run.config, _run.schema
    with torch.no_grad():
        assert torch.equal(m2.encode_image(batch["images"]), model.encode_image(batch["images"]))
