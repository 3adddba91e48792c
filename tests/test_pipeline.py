"""End to end on the real PAD-UFES-20 and Derm7pt subsets: pretrain -> embed -> probe,
retrieve, extrapolate, and the CLI around them (tiny models, CPU)."""

from __future__ import annotations

import json

import h5py

from slimp_cli.features.embed import embed
from slimp_cli.models.config import ModelConfig
from slimp_cli.train.pretrain import pretrain

TINY = dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32)


def test_probe_random_and_patient_splits_over_three_seeds(pad_store, tmp_path, run_slimp):
    out = tmp_path / "probe.json"
    for split in ("random", "patient"):
        res = run_slimp(
            "probe",
            pad_store,
            "--split",
            split,
            "--seeds",
            "0,1,2",
            "--json",
            tmp_path / f"{split}.json",
        )
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


def test_baseline_warns_about_a_leaking_column(
    tmp_path_factory, pad_source, pad_store, run_slimp, tiny_train
):
    """A schema that keeps `biopsed` makes the leakage audit name it."""
    from slimp_cli.data.schema import load_dataset_schema
    from slimp_cli.ingest import ingest

    schema = load_dataset_schema("pad-ufes-20")
    schema["excluded"] = [e for e in schema["excluded"] if e["name"] != "biopsed"]
    schema["lesion_features"].append({"name": "biopsed", "type": "boolean"})
    tmp = tmp_path_factory.mktemp("leaky")
    (tmp / "leaky.json").write_text(json.dumps(schema))
    shards = tmp / "shards"
    ingest("pad-ufes-20", pad_source, shards, schema=tmp / "leaky.json", image_size=32)
    run = pretrain(
        shards, tmp / "run", model=ModelConfig(variant="nested", **TINY), train=tiny_train(2)
    )
    store = embed(run, shards, tmp / "leaky.h5")
    res = run_slimp("probe", store, "--baseline", "--seeds", "0", "--json", tmp / "p.json")
    assert res.returncode == 0, res.stderr
    warnings = json.loads((tmp / "p.json").read_text())["warnings"]
    assert any("biopsed" in w for w in warnings), warnings
    assert {r["method"] for r in json.loads((tmp / "p.json").read_text())["results"]} >= {
        "baseline-logreg",
        "baseline-gbm",
    }
    # the store of the built-in schema (biopsed excluded) raises no such warning
    res = run_slimp("probe", pad_store, "--baseline", "--seeds", "0", "--json", tmp / "c.json")
    assert res.returncode == 0, res.stderr
    assert not any("biopsed" in w for w in json.loads((tmp / "c.json").read_text())["warnings"])


def test_extrapolate_pad_reference_onto_image_only_derm7pt(
    pad_store, pad_run, derm7pt_shards, tmp_path, run_slimp
):
    target = embed(pad_run, derm7pt_shards, tmp_path / "derm.h5", image_only=True, batch_size=128)
    with h5py.File(target, "r") as f:
        assert list(f["features"]) == ["image"]
        n = f["features/image"].shape[0]
    assert n == 657
    for strategy in ("ilp", "il", "ii"):
        res = run_slimp("extrapolate", pad_store, target, "--strategy", strategy)
        assert res.returncode == 0, res.stderr
        with h5py.File(target, "r") as f:
            g = f[f"pseudo/{strategy}"]
            assert g["lesion"].shape == (n, 32) and g["patient"].shape == (n, 32)
            assert g["lesion_index"][:].max() < 531
        res = run_slimp(
            "probe",
            target,
            "--pseudo",
            strategy,
            "--seeds",
            "0",
            "--json",
            tmp_path / f"{strategy}.json",
        )
        assert res.returncode == 0, res.stderr
        rows = json.loads((tmp_path / f"{strategy}.json").read_text())["results"]
        assert rows and all(r.get("pseudo") == strategy for r in rows)


def test_retrieve_cli_writes_design_json(pad_store, tmp_path, run_slimp):
    res = run_slimp(
        "retrieve", pad_store, "--json", tmp_path / "r.json", "--plots", tmp_path / "plots"
    )
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    for task in ("image_to_lesion", "lesion_to_image", "image_to_patient", "patient_to_image"):
        assert {"R@1", "R@10", "NDCG@10", "mAP"} <= set(data[task])
    assert set(data["similarity_percentiles"]["matching"]) == {
        "2",
        "10",
        "25",
        "50",
        "75",
        "90",
        "98",
    }
    assert list((tmp_path / "plots").glob("*.png"))


def test_demo_prints_the_results_table(tmp_path, run_slimp):
    res = run_slimp(
        "demo", "--out", tmp_path / "demo", "--patients", "60", "--steps", "3", "--threads", "1"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "slimp demo" in res.stdout and "pseudo" in res.stdout
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    models = {r["model"] for r in report["results"]}
    assert any("SimCLR" in m for m in models) and any("ilp" in m for m in models)
    # what the numbers depend on is recorded, with the thread count the demo really used
    assert report["reproducibility"]["torch_threads"] == 1
    assert "deterministic for: 1 torch threads" in res.stdout


def test_demo_refuses_zero_threads(run_slimp, tmp_path):
    res = run_slimp("demo", "--out", tmp_path / "demo", "--threads", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr
