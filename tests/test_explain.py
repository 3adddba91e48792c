"""`slimp explain` (slimp_cli.eval.explain): attention capture that changes nothing, App. G's
feature importance against a hand-computed answer, and the command's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from slimp_cli.data.shards import ShardIndex
from slimp_cli.eval.explain import (
    capture_attention,
    feature_importance,
    token_features,
    trace_attention,
)
from slimp_cli.models import patient_record
from slimp_cli.models.runs import load_run


def _batch(run, index, n_patients=12):
    patients, lesions, owners = [], [], []
    for p in range(n_patients):
        rec = index.patient(p)
        patients.append(patient_record(rec.fields, rec.derived))
        for j, les in enumerate(rec.lesions):
            lesions.append(les["fields"])
            owners.append((p, j))
    images = torch.stack([run.preprocess.load(index.patient(p).read_image(j)) for p, j in owners])
    inputs = run.model.inputs
    lesion_tab = inputs.lesion_tab([patients[p] for p, _ in owners], lesions)
    return images, lesion_tab, inputs.patient_tab(patients)


def _encode(model, images, lesion_tab, patient_tab):
    return (
        model.encode_image(images),
        model.encode_lesion(lesion_tab),
        model.encode_patient(patient_tab),
    )


@pytest.mark.parametrize("grad", [False, True])
def test_hooks_leave_every_output_bit_identical(pad_run, pad_shards, grad, one_torch_thread):
    """With and without the hooks, in inference mode (PyTorch's fused fast path) and with
    autograd on (the slow path): the same bits."""
    run = load_run(pad_run)
    batch = _batch(run, ShardIndex.open(pad_shards))
    with torch.set_grad_enabled(grad):
        before = _encode(run.model, *batch)
        with capture_attention(run.model) as captured:
            during = _encode(run.model, *batch)
        after = _encode(run.model, *batch)
    for a, b, c in zip(before, during, after):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert set(captured) == {"image", "lesion", "patient"}
    n_lesions, n_patients = batch[0].shape[0], batch[2].categorical.shape[0]
    assert captured["lesion"][0].shape[0] == n_lesions
    assert captured["patient"][0].shape[0] == n_patients
    # the hooks are gone afterwards
    for enc in (run.model.lesion_encoder, run.model.patient_encoder):
        assert not enc.transformer.layers[-1]._forward_pre_hooks
    assert not run.model.image_encoder.blocks[-1].attn._forward_pre_hooks


def test_captured_attention_equals_the_unfused_computation(pad_run, pad_shards, one_torch_thread):
    run = load_run(pad_run)
    images, lesion_tab, _ = _batch(run, ShardIndex.open(pad_shards), n_patients=5)
    model = run.model
    # ViT: timm's own unfused path hands its softmax weights to attn_drop
    attn = model.image_encoder.blocks[-1].attn
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    fused = attn.fused_attn
    attn.fused_attn = False
    try:
        with torch.no_grad(), capture_attention(model) as captured:
            model.encode_image(images)
    finally:
        attn.fused_attn = fused
        handle.remove()
    torch.testing.assert_close(captured["image"][0], seen[0], rtol=1e-5, atol=1e-6)

    # TRACE: softmax(QK^T / sqrt(d_head)) from the layer's own in-projection, by hand
    layer = model.lesion_encoder.transformer.layers[-1]
    src = []
    handle = layer.register_forward_pre_hook(lambda m, a, k: src.append(a[0]), with_kwargs=True)
    try:
        with torch.no_grad(), capture_attention(model) as captured:
            model.encode_lesion(lesion_tab)
    finally:
        handle.remove()
    x = src[0]
    mha = layer.self_attn
    d, h = mha.embed_dim, mha.num_heads
    q, k, _ = (x @ mha.in_proj_weight.T + mha.in_proj_bias).split(d, dim=-1)
    q = q.view(x.shape[0], -1, h, d // h).transpose(1, 2)
    k = k.view(x.shape[0], -1, h, d // h).transpose(1, 2)
    want = ((q @ k.transpose(-2, -1)) / (d // h) ** 0.5).softmax(-1)
    torch.testing.assert_close(captured["lesion"][0], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trace_attention(layer, x), want, rtol=1e-5, atol=1e-6)


def test_feature_importance_known_answer():
    # 1 row, 1 head, tokens [CLS, f0, f1, f2]; the CLS row and column must not matter, and
    # each feature row is renormalised without its diagonal
    a = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],  # CLS query: dropped
            [0.2, 0.4, 0.2, 0.2],  # f0 -> (f1, f2) = (.5, .5) after masking and renorm.
            [0.5, 0.5, 0.0, 0.0],  # f1 -> f0 only
            [0.5, 0.25, 0.0, 0.25],  # f2 -> f0 only (its own .25 is masked)
        ]
    )[None, None]
    imp = feature_importance(a)
    # Imp_j before normalisation: f0 (1 + 1) / 2, f1 .5 / 2, f2 .5 / 2 -> 2/3, 1/6, 1/6
    np.testing.assert_allclose(imp, [2 / 3, 1 / 6, 1 / 6])
    # heads are averaged *before* masking: with a uniform second head the averaged rows are
    # f0 -> (0, .5, .5), f1 -> (.75, 0, .25), f2 -> (2/3, 1/3, 0): Imp = (17, 10, 9) / 36;
    # two identical data rows give the same answer (mean over rows)
    two = np.concatenate([a, np.full_like(a, 0.25)], axis=1)
    np.testing.assert_allclose(
        feature_importance(np.concatenate([two, two])), [17 / 36, 10 / 36, 9 / 36]
    )
    assert feature_importance(np.ones((3, 2, 2, 2)) / 2).tolist() == [1.0]  # one feature


def test_token_order_is_categoricals_then_numericals():
    feats = [
        {"name": "age", "type": "numerical"},
        {"name": "sex", "type": "categorical"},
        {"name": "size", "type": "numerical"},
        {"name": "itch", "type": "boolean"},
    ]
    assert [f["name"] for f in token_features(feats)] == ["sex", "itch", "age", "size"]


@pytest.fixture(scope="module")
def pad_simclr_run(tmp_path_factory, pad_shards):
    from slimp_cli.train import pretrain

    torch.set_num_threads(1)
    return pretrain(
        pad_shards,
        tmp_path_factory.mktemp("simclr") / "run",
        model=dict(variant="image", image_model="vit_test", img_size=32),
        train=dict(
            patients_per_batch=4,
            lesions_per_patient=4,
            epochs=1,
            max_steps=2,
            device="cpu",
            workers=0,
        ),
    )


def test_explain_writes_importance_and_attention_maps(
    pad_run, pad_simclr_run, pad_shards, tmp_path, run_slimp
):
    out = tmp_path / "explain"
    r = run_slimp(
        "explain",
        pad_run,
        pad_shards,
        "--out",
        out,
        "--compare",
        pad_simclr_run,
        "--n",
        4,
        "--max-rows",
        300,
    )
    assert r.returncode == 0, r.stderr
    schema = ShardIndex.open(pad_shards).schema
    report = json.loads((out / "importance.json").read_text())
    (label,) = [k for k, v in report["importance"].items() if v]  # SimCLR has no TRACE
    enc = report["importance"][label]
    # one bar per feature of the schema, each encoder's importance sums to 1
    assert sorted(enc["lesion"]["features"]) == sorted(f["name"] for f in schema.lesion_features)
    assert sorted(enc["patient"]["features"]) == sorted(f["name"] for f in schema.patient_all)
    assert "n_lesions" in enc["patient"]["features"]
    for e in enc.values():
        assert sum(e["importance"]) == pytest.approx(1.0)
        assert all(v > 0 for v in e["importance"])
    assert enc["lesion"]["rows"] >= 300 and enc["patient"]["rows"] < enc["lesion"]["rows"]

    att = json.loads((out / "attention.json").read_text())
    assert len(att["lesions"]) == 4 and len(att["runs"]) == 2
    assert sum(les["malignant"] for les in att["lesions"]) == 2  # half malignant
    maps = np.load(out / "attention.npz")
    for run_label, key in att["npz_keys"].items():
        assert maps[key].shape == (4, 32, 32)  # the model's image size
        np.testing.assert_allclose(att["map_sums"][run_label], 1.0, rtol=1e-5)
        grid = np.asarray(att["maps"][run_label])
        assert grid.shape == (4, 4, 4)  # 32 px / patch 8
    for png in ("importance.png", "attention.png"):
        img = np.asarray(Image.open(out / png).convert("L"))
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10  # not blank


def test_explain_refuses_data_of_another_schema(pad_run, derm7pt_shards, tmp_path, run_slimp):
    r = run_slimp("explain", pad_run, derm7pt_shards, "--out", tmp_path / "x")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
