"""End to end on the real PAD-UFES-20 and Derm7pt subsets: pretrain -> embed -> probe,
retrieve, extrapolate, and the CLI around them (tiny models, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from slimp_cli.model_config import ModelConfig
from slimp_cli.embed import embed
from slimp_cli.errors import SlimpError
from slimp_cli.schema import encode_tabular
from slimp_cli.shards import ShardIndex
from slimp_cli.train.train_config import TrainConfig
from slimp_cli.train.pretrain import pretrain
from slimp_cli.runs import load_run

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)


def _train(steps: int = 6) -> TrainConfig:
    return TrainConfig(patients_per_batch=8, lesions_per_patient=4, epochs=1, max_steps=steps,
                       lr=1e-3, device="cpu", workers=0, seed=0)


def slimp_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would (exit codes and stderr included)."""
    return subprocess.run([sys.executable, "-m", "slimp_cli.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory, pad_shards) -> Path:
    out = tmp_path_factory.mktemp("pad_run") / "run"
    return pretrain(pad_shards, out, model=ModelConfig(variant="nested", **TINY), train=_train())


@pytest.fixture(scope="module")
def pad_store(tmp_path_factory, pad_run, pad_shards) -> Path:
    out = tmp_path_factory.mktemp("stores") / "pad.h5"
    return embed(pad_run, pad_shards, out, batch_size=50)


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
        h = model.encode_lesion(encode_tabular(schema.lesion_features, [l["fields"] for l in rec.lesions]))
        x = model.encode_patient(encode_tabular(schema.patient_all, [{**rec.fields, **rec.derived}]))
    with h5py.File(pad_store, "r") as f:
        pids = f["patient_id"].asstr()[:]
        rows = np.flatnonzero(pids == rec.patient_id)
        np.testing.assert_allclose(f["features/lesion"][rows], h.numpy(), atol=1e-5)
        np.testing.assert_allclose(f["features/patient"][rows[0]], x[0].numpy(), atol=1e-5)


def test_probe_random_and_patient_splits_over_three_seeds(pad_store, tmp_path):
    out = tmp_path / "probe.json"
    for split in ("random", "patient"):
        res = slimp_cli("probe", pad_store, "--split", split, "--seeds", "0,1,2",
                        "--json", tmp_path / f"{split}.json")
        assert res.returncode == 0, res.stderr
        assert "linear" in res.stdout and "knn" in res.stdout
        data = json.loads((tmp_path / f"{split}.json").read_text())
        methods = {r["method"] for r in data["results"]}
        assert methods == {"linear", "knn"}
        for r in data["results"]:
            assert r["split"] == split and r["seeds"] == [0, 1, 2]
            assert r["features"] == ["image", "lesion", "patient"]
            for key in ("accuracy", "balanced_accuracy", "f1", "auc"):
                assert 0.0 <= r["metrics"][key]["mean"] <= 1.0
    assert not out.exists()


def test_baseline_warns_about_a_leaking_column(tmp_path_factory, pad_source, pad_store):
    """A schema that keeps `biopsed` makes the leakage audit name it."""
    from slimp_cli.ingest import ingest
    from slimp_cli.schema import load_dataset_schema

    schema = load_dataset_schema("pad-ufes-20")
    schema["excluded"] = [e for e in schema["excluded"] if e["name"] != "biopsed"]
    schema["lesion_features"].append({"name": "biopsed", "type": "boolean"})
    tmp = tmp_path_factory.mktemp("leaky")
    (tmp / "leaky.json").write_text(json.dumps(schema))
    shards = tmp / "shards"
    ingest("pad-ufes-20", pad_source, shards, schema=tmp / "leaky.json", image_size=32)
    run = pretrain(shards, tmp / "run", model=ModelConfig(variant="nested", **TINY), train=_train(2))
    store = embed(run, shards, tmp / "leaky.h5")
    res = slimp_cli("probe", store, "--baseline", "--seeds", "0", "--json", tmp / "p.json")
    assert res.returncode == 0, res.stderr
    warnings = json.loads((tmp / "p.json").read_text())["warnings"]
    assert any("biopsed" in w for w in warnings), warnings
    assert {r["method"] for r in json.loads((tmp / "p.json").read_text())["results"]} >= {
        "baseline-logreg", "baseline-gbm"}
    # the store of the built-in schema (biopsed excluded) raises no such warning
    res = slimp_cli("probe", pad_store, "--baseline", "--seeds", "0", "--json", tmp / "c.json")
    assert res.returncode == 0, res.stderr
    assert not any("biopsed" in w for w in json.loads((tmp / "c.json").read_text())["warnings"])


def test_extrapolate_pad_reference_onto_image_only_derm7pt(pad_store, pad_run, derm7pt_shards, tmp_path):
    target = embed(pad_run, derm7pt_shards, tmp_path / "derm.h5", image_only=True, batch_size=128)
    with h5py.File(target, "r") as f:
        assert list(f["features"]) == ["image"]
        n = f["features/image"].shape[0]
    assert n == 657
    for strategy in ("ilp", "il", "ii"):
        res = slimp_cli("extrapolate", pad_store, target, "--strategy", strategy)
        assert res.returncode == 0, res.stderr
        with h5py.File(target, "r") as f:
            g = f[f"pseudo/{strategy}"]
            assert g["lesion"].shape == (n, 32) and g["patient"].shape == (n, 32)
            assert g["lesion_index"][:].max() < 531
        res = slimp_cli("probe", target, "--pseudo", strategy, "--seeds", "0",
                        "--json", tmp_path / f"{strategy}.json")
        assert res.returncode == 0, res.stderr
        rows = json.loads((tmp_path / f"{strategy}.json").read_text())["results"]
        assert rows and all(r.get("pseudo") == strategy for r in rows)


def test_retrieve_cli_writes_design_json(pad_store, tmp_path):
    res = slimp_cli("retrieve", pad_store, "--json", tmp_path / "r.json", "--plots", tmp_path / "plots")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    for task in ("image_to_lesion", "lesion_to_image", "image_to_patient", "patient_to_image"):
        assert {"R@1", "R@10", "NDCG@10", "mAP"} <= set(data[task])
    assert set(data["similarity_percentiles"]["matching"]) == {"2", "10", "25", "50", "75", "90", "98"}
    assert list((tmp_path / "plots").glob("*.png"))


def test_embed_errors_are_one_line(pad_run, derm7pt_shards, tmp_path):
    # Derm7pt has other columns: the PAD model's tabular encoders cannot read them.
    with pytest.raises(SlimpError, match="adapt|--image-only"):
        embed(pad_run, derm7pt_shards, tmp_path / "x.h5")
    res = slimp_cli("embed", pad_run, derm7pt_shards, "--out", tmp_path / "x.h5")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "x.h5").exists()
    res = slimp_cli("embed", tmp_path / "nope", derm7pt_shards, "--out", tmp_path / "y.h5")
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_flat_and_image_models_write_only_their_features(pad_shards, derm7pt_shards, tmp_path):
    flat = pretrain(derm7pt_shards, tmp_path / "flat", model=ModelConfig(variant="nested", **TINY),
                    train=_train(2))
    assert json.loads((flat / "config.json").read_text())["model"]["variant"] == "flat"
    store = embed(flat, derm7pt_shards, tmp_path / "flat.h5")
    with h5py.File(store, "r") as f:
        assert sorted(f["features"]) == ["image", "lesion"] and "model" not in f
        assert "raw/patient" not in f
    image = pretrain(pad_shards, tmp_path / "img", model=ModelConfig(variant="image", **TINY),
                     train=_train(2))
    store = embed(image, pad_shards, tmp_path / "img.h5")
    with h5py.File(store, "r") as f:
        assert sorted(f["features"]) == ["image"]


def test_demo_prints_the_results_table(tmp_path):
    res = slimp_cli("demo", "--out", tmp_path / "demo", "--patients", "60", "--steps", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "slimp demo" in res.stdout and "pseudo" in res.stdout
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    models = {r["model"] for r in report["results"]}
    assert any("SimCLR" in m for m in models) and any("ilp" in m for m in models)
