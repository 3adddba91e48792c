"""`slimp export` (timm files + heads + model card) and `slimp encode` (one lesion, no shards):
the exported image encoder loads in plain timm and gives `slimp embed`'s image features; encode
gives the store's row of that lesion."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from slimp_cli.data.shards import ShardIndex
from slimp_cli.data.transforms import Preprocess
from slimp_cli.features.store import FeatureStore


@pytest.fixture(scope="module")
def exported(pad_run, tmp_path_factory):
    from conftest import _run_cli

    out = tmp_path_factory.mktemp("export") / "pad-model"
    res = _run_cli("export", pad_run, out)
    assert res.exit_code == 0, res.output
    return out


def _store_rows(store):
    with FeatureStore.open(store) as st:
        return {k: st.features([k]) for k in st.feature_names}, list(st.lesion_id)


def _pairs(shards):
    index = ShardIndex.open(shards)
    return index, [(p, j) for p in range(len(index)) for j in range(len(index.patient(p).lesions))]


def test_export_loads_in_plain_timm_with_embeds_image_features(
    exported, pad_store, pad_shards, one_torch_thread
):
    import timm
    from safetensors.torch import load_file

    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "slimp_config.json",
        "slimp_heads.safetensors",
    ]
    model = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 32, 32)
    pre = Preprocess(img_size=32, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    heads = load_file(str(exported / "slimp_heads.safetensors"))
    index, pairs = _pairs(pad_shards)
    some = pairs[:: max(1, len(pairs) // 24)]
    images = torch.stack([pre.load(index.patient(p).read_image(j)) for p, j in some])
    with torch.no_grad():
        pooled = model(images)
    assert pooled.shape == (len(some), 64)  # num_classes=0: pooled features
    projected = pooled @ heads["image_proj.weight"].T + heads["image_proj.bias"]
    feats, _ = _store_rows(pad_store)
    rows = [pairs.index(pair) for pair in some]
    np.testing.assert_allclose(projected.numpy(), feats["image"][rows], rtol=1e-4, atol=1e-5)

    # Older timm: the registered architecture + model_args + the weights file.
    config = json.loads((exported / "config.json").read_text())
    old_style = timm.create_model(
        config["architecture"],
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=dict(file=str(exported / "model.safetensors")),
        **config["model_args"],
    ).eval()
    with torch.no_grad():
        assert torch.allclose(old_style(images), pooled, atol=1e-6)


def test_model_card_names_data_recipe_metrics_with_split_and_limits(
    pad_run, pad_store, tmp_path, run_cli
):
    report = tmp_path / "probe.json"
    res = run_cli("probe", pad_store, "--seeds", "0", "--method", "knn", "--json", report)
    assert res.exit_code == 0, res.output
    out = tmp_path / "card"
    res = run_cli("export", pad_run, out, "--metrics", report)
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    knn = json.loads(report.read_text())["results"][0]
    auc = knn["metrics"]["auc"]
    assert "`pad-ufes-20`" in card and "`diameter_1`" in card  # data and schema
    assert "`biopsed`" in card  # an excluded label leak, with its reason
    assert "6 epochs" not in card and "1 epochs (stopped at step 6)" in card  # recipe
    assert f"| knn | holdout | {'+'.join(knn['features'])} |" in card  # metric with its split
    assert f"{auc['mean']:.3f} ± {auc['std']:.3f}" in card
    assert "Training loss at step 6" in card
    assert "**Not a medical device.**" in card


def test_export_refuses_a_non_empty_folder(pad_run, tmp_path, run_cli):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    res = run_cli("export", pad_run, tmp_path / "x")
    assert res.exit_code == 1 and "is not empty" in res.stderr
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def _a_single_lesion_patient(index):
    for p in range(len(index)):
        rec = index.patient(p)
        if len(rec.lesions) == 1 and rec.fields.get("age") is not None:
            return p, rec
    raise AssertionError("no single-lesion patient with an age")


def test_encode_equals_the_stores_row(
    pad_run, pad_store, pad_shards, pad_source, tmp_path, run_slimp
):
    index, pairs = _pairs(pad_shards)
    p, rec = _a_single_lesion_patient(index)
    lesion = rec.lesions[0]
    image = tmp_path / "lesion.jpg"
    image.write_bytes(rec.read_image(0))
    # the lesion's row as in the dataset's table: strings, typed as ingest types them
    with open(pad_source / "metadata.csv", newline="") as fh:
        (table_row,) = [r for r in csv.DictReader(fh) if r["img_id"] == lesion["image_id"]]
    meta = tmp_path / "row.json"
    meta.write_text(json.dumps({**table_row, "n_lesions": 1}))
    out = tmp_path / "vec" / "lesion.json"
    res = run_slimp("encode", pad_run, "--image", image, "--meta", meta, "--out", out)
    assert res.returncode == 0, res.stderr
    vec = json.loads(out.read_text())
    feats, lesion_ids = _store_rows(pad_store)
    row = pairs.index((p, 0))
    assert lesion_ids[row] == lesion["lesion_id"]
    assert vec["levels"] == ["image", "lesion", "patient"]
    for level in vec["levels"]:
        np.testing.assert_allclose(vec[level], feats[level][row], rtol=1e-4, atol=1e-5)
    assert "biopsed" in vec["ignored"] and "diagnostic" in vec["ignored"]  # not model inputs
    assert "ignored field(s)" in res.stderr


def test_encode_shard_values_and_image_alone(pad_run, pad_store, pad_shards, tmp_path, run_cli):
    from slimp_cli.features.encode import encode_lesion

    index, pairs = _pairs(pad_shards)
    p = next(i for i in range(len(index)) if len(index.patient(i).lesions) > 1)
    rec = index.patient(p)
    image = tmp_path / "x.jpg"
    image.write_bytes(rec.read_image(1))
    feats, _ = _store_rows(pad_store)
    row = pairs.index((p, 1))
    vec = encode_lesion(pad_run, image, {**rec.fields, **rec.derived, **rec.lesions[1]["fields"]})
    for level in ("image", "lesion", "patient"):
        np.testing.assert_allclose(vec[level], feats[level][row], rtol=1e-4, atol=1e-5)
    res = run_cli("encode", pad_run, "--image", image)  # no --meta: the image vector alone
    assert res.exit_code == 0, res.output
    alone = json.loads(res.stdout)
    assert alone["levels"] == ["image"] and "lesion" not in alone
    np.testing.assert_allclose(alone["image"], feats["image"][row], rtol=1e-4, atol=1e-5)


def test_encode_bad_meta_is_one_line(pad_run, tmp_path, run_cli):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not an image")
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps({"age": "old"}))
    res = run_cli("encode", pad_run, "--image", image, "--meta", meta)
    assert res.exit_code == 1
    assert res.stderr.startswith("error: --meta: field 'age' is numerical, got 'old'")
    meta.write_text("[1, 2]")
    res = run_cli("encode", pad_run, "--image", image, "--meta", meta)
    assert res.exit_code == 1 and "one JSON object" in res.stderr
    meta.write_text("{}")
    res = run_cli("encode", pad_run, "--image", image, "--meta", meta)
    assert res.exit_code == 1 and "cannot decode image" in res.stderr


@pytest.fixture(scope="module")
def validated_run(synth_shards, tmp_path_factory):
    """Two whole epochs of a tiny model with held-out patients: validation rows per epoch."""
    from conftest import TINY_MODEL

    from slimp_cli.models.config import ModelConfig
    from slimp_cli.train import TrainConfig, pretrain

    out = tmp_path_factory.mktemp("validated") / "run"
    train = TrainConfig(
        patients_per_batch=27, lesions_per_patient=2, epochs=2, device="cpu", workers=0
    )
    return pretrain(synth_shards, out, model=ModelConfig(**TINY_MODEL), train=train)


def test_card_has_hub_front_matter_validation_rows_and_outputs_are_0644(
    validated_run, tmp_path, run_slimp
):
    import os
    import stat

    import yaml

    from slimp_cli.models.runs import read_config, read_metrics

    out = tmp_path / "card"
    res = run_slimp("export", validated_run, out)
    assert res.returncode == 0, res.stderr
    card = (out / "README.md").read_text()
    # the hub's model-card format: YAML between the first two `---` lines
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    meta = yaml.safe_load(head)
    assert meta["license"] == "other" and meta["library_name"] == "timm"
    assert meta["datasets"] == [read_config(validated_run)["schema"]["name"]]
    assert {"timm", "slimp", "slimp-nested"} <= set(meta["tags"])
    assert meta["metrics"] == []  # nothing measured at export: no metric claimed
    assert body.lstrip().startswith("# SLIMP ")
    # every held-out validation row of metrics.jsonl, per epoch
    val = read_metrics(validated_run, kind="validation")
    assert [r["epoch"] for r in val] == [1, 2]
    for r in val:
        assert f"| {r['epoch']} | {r['step']} | {r['val_loss']:.4f} |" in card
    best = min(val, key=lambda r: r["val_loss"])
    assert f"lowest val_loss {best['val_loss']:.4f} after epoch {best['epoch']}" in card
    # every output readable by others as a plain `open()` makes it: 0644 under umask 022
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in modes} and len(modes) == 5


def test_front_matter_lists_the_metrics_the_card_quotes(pad_run):
    import yaml

    from slimp_cli.features.export import model_card, timm_config
    from slimp_cli.models.runs import load_run

    run = load_run(pad_run, device="cpu")
    report = {
        "path": pad_run / "probe.json",
        "results": [{"method": "knn", "metrics": {"auc": {"mean": 0.8}, "f1": {"mean": 0.5}}}],
    }
    card = model_card(run, timm_config(run), [report])
    meta = yaml.safe_load(card[4:].split("\n---\n", 1)[0])
    assert meta["metrics"] == ["roc_auc"]
    assert meta["datasets"] == ["pad-ufes-20"]
