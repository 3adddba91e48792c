"""`slimp embed` (slimp_cli.features.embed): the store layout, features equal to the model, errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import encode_tabular
from slimp_cli.data.shards import ShardIndex
from slimp_cli.features.embed import embed
from slimp_cli.models.config import ModelConfig
from slimp_cli.models.runs import load_run
from slimp_cli.train.pretrain import pretrain

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)


def test_embed_writes_the_design_layout(pad_store, pad_shards, pad_run):
    index = ShardIndex.open(pad_shards)
    n = sum(len(index.patient(i).lesions) for i in range(len(index)))
    with h5py.File(pad_store, "r") as f:  # readable with h5py alone
        assert f.attrs["format"] == "slimp-feature-store" and bool(f.attrs["complete"])
        config = json.loads(f.attrs["config"])
        assert len(config["checkpoint_sha256"]) == 64 and config["manifest_sha256"]
        for level in ("image", "lesion", "patient"):
            assert f[f"features/{level}"].shape == (n, 32)
            assert np.isfinite(f[f"features/{level}"][:]).all()
        assert f["lesion_id"].shape == (n,) and f["patient_id"].shape == (n,)
        assert f["model/phenotype_weight"].shape == (32, 64)
        classes = json.loads(f["label"].attrs["classes"])
        assert classes == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
        mal = f["malignant"][:]
        labels = np.asarray(classes)[f["label"][:]]
        assert (mal == np.isin(labels, ["BCC", "MEL", "SCC"])).all()
        # patient features are repeated per lesion: identical rows for one patient
        pids = f["patient_id"].asstr()[:]
        pf = f["features/patient"][:]
        first = {p: i for i, p in reversed(list(enumerate(pids)))}
        assert all(np.array_equal(pf[i], pf[first[p]]) for i, p in enumerate(pids))
        raw_cols = json.loads(f["raw/lesion"].attrs["columns"])
        assert "region=FACE" in raw_cols and "biopsed" not in " ".join(raw_cols)
        assert f["raw/patient"].shape[0] == n


def test_embedded_features_equal_the_model_on_the_same_inputs(pad_store, pad_run, pad_shards):
    """The store's lesion and patient features are what the rebuilt model computes."""
    _run = load_run(pad_run, device="cpu")
    model, _, schema = _run.model, _run.config, _run.schema
    model.eval()
    index = ShardIndex.open(pad_shards)
    rec = index.patient(0)
    with torch.no_grad():
        h = model.encode_lesion(
            encode_tabular(schema.lesion_features, [l["fields"] for l in rec.lesions])
        )
        x = model.encode_patient(
            encode_tabular(schema.patient_all, [{**rec.fields, **rec.derived}])
        )
    with h5py.File(pad_store, "r") as f:
        pids = f["patient_id"].asstr()[:]
        rows = np.flatnonzero(pids == rec.patient_id)
        np.testing.assert_allclose(f["features/lesion"][rows], h.numpy(), atol=1e-5)
        np.testing.assert_allclose(f["features/patient"][rows[0]], x[0].numpy(), atol=1e-5)


def test_embed_errors_are_one_line(pad_run, derm7pt_shards, tmp_path, run_slimp):
    # Derm7pt has other columns: the PAD model's tabular encoders cannot read them.
    with pytest.raises(SlimpError, match="adapt|--image-only"):
        embed(pad_run, derm7pt_shards, tmp_path / "x.h5")
    res = run_slimp("embed", pad_run, derm7pt_shards, "--out", tmp_path / "x.h5")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "x.h5").exists()
    res = run_slimp("embed", tmp_path / "nope", derm7pt_shards, "--out", tmp_path / "y.h5")
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_flat_and_image_models_write_only_their_features(
    pad_shards, derm7pt_shards, tmp_path, tiny_train
):
    flat = pretrain(
        derm7pt_shards,
        tmp_path / "flat",
        model=ModelConfig(variant="nested", **TINY),
        train=tiny_train(2),
    )
    assert json.loads((flat / "config.json").read_text())["model"]["variant"] == "flat"
    store = embed(flat, derm7pt_shards, tmp_path / "flat.h5")
    with h5py.File(store, "r") as f:
        assert sorted(f["features"]) == ["image", "lesion"] and "model" not in f
        assert "raw/patient" not in f
    image = pretrain(
        pad_shards,
        tmp_path / "img",
        model=ModelConfig(variant="image", **TINY),
        train=tiny_train(2),
    )
    store = embed(image, pad_shards, tmp_path / "img.h5")
    with h5py.File(store, "r") as f:
        assert sorted(f["features"]) == ["image"]
