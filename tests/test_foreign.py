"""`slimp embed DATA --image-model NAME --image-weights FILE`: any timm encoder, same protocol."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import timm
import torch

from slimp_cli.data.shards import ShardIndex
from slimp_cli.features.store import FeatureStore
from slimp_cli.features.timm_encoder import build_foreign_encoder


@pytest.fixture(scope="module")
def vit_tiny_weights(tmp_path_factory):
    """A 224 px vit_tiny_patch16_224 state dict (with its classifier head) written with timm,
    as a user's downloaded foundation-model file would be; and its safetensors twin."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    folder = tmp_path_factory.mktemp("weights")
    pt = folder / "vit_tiny.pth"
    torch.save(model.state_dict(), pt)
    st = folder / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    return pt, st


def test_foreign_store_is_probed_like_a_slimp_store(
    vit_tiny_weights, synth_shards, tmp_path, run_slimp, run_cli, one_torch_thread
):
    pt, _ = vit_tiny_weights
    store = tmp_path / "vit.h5"
    r = run_slimp(
        "embed",
        synth_shards,
        "--image-model",
        "vit_tiny_patch16_224",
        "--image-weights",
        pt,
        "--input-size",
        32,
        "--out",
        store,
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    index = ShardIndex.open(synth_shards)
    n = sum(len(index.patient(i).lesions) for i in range(len(index)))
    with h5py.File(store, "r") as f:
        assert bool(f.attrs["complete"])
        assert sorted(f["features"]) == ["image"]  # image features only
        assert f["features/image"].shape == (n, 192)  # vit_tiny's width
        assert "split" not in f  # no row was trained on: no holdout side
        config = json.loads(f.attrs["config"])
    assert config["foreign"] is True and config["model"]["image_model"] == "vit_tiny_patch16_224"
    # the model's own preprocessing: vit_tiny's pretrained_cfg uses mean = std = 0.5
    assert config["preprocess"] == {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert len(config["image_weights_sha256"]) == 64

    # probe reads it: the default split is the lesion-grouped random one; patient works too
    out = tmp_path / "probe.json"
    r = run_slimp("probe", store, "--json", out, "--baseline", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["split"]["kind"] == "random"
    methods = {row["method"] for row in report["results"]}
    assert {"linear", "knn", "baseline-logreg"} <= methods
    assert all(
        row["features"] == ["image"] for row in report["results"] if row["method"] == "linear"
    )
    r = run_cli("probe", store, "--split", "patient", "--method", "linear", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = run_cli("probe", store, "--split", "holdout", "--device", "cpu")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1


def test_foreign_features_are_the_timm_model_on_the_same_pixels(
    vit_tiny_weights, synth_shards, tmp_path, one_torch_thread
):
    """The stored vectors are the weights' model (position embeddings resampled to 32 px) on
    images normalised with its own mean/std; the safetensors file gives the same vectors."""
    from slimp_cli.features.timm_encoder import embed_foreign

    pt, st = vit_tiny_weights
    a = embed_foreign(
        synth_shards,
        tmp_path / "a.h5",
        image_model="vit_tiny_patch16_224",
        image_weights=pt,
        img_size=32,
        device="cpu",
        batch_size=17,
    )
    b = embed_foreign(
        synth_shards,
        tmp_path / "b.h5",
        image_model="vit_tiny_patch16_224",
        image_weights=st,
        img_size=32,
        device="cpu",
    )
    module, pre = build_foreign_encoder("vit_tiny_patch16_224", weights=pt, img_size=32)
    index = ShardIndex.open(synth_shards)
    rec = index.patient(0)
    x = torch.stack([pre.load(rec.read_image(j)) for j in range(len(rec.lesions))])
    with torch.no_grad():
        expected = module(x).numpy()
    # an independent reference: timm's own model at 224 px loaded strictly, then its
    # position embedding resampled by timm to 32 px
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    state = {k: v for k, v in torch.load(pt, weights_only=True).items() if not k.startswith("head")}
    state = timm.models.vision_transformer.checkpoint_filter_fn(state, ref)
    ref.load_state_dict(state, strict=True)
    ref.eval()
    with torch.no_grad():
        want = ref(x).numpy()
    np.testing.assert_allclose(expected, want, rtol=1e-5, atol=1e-5)
    with FeatureStore.open(a) as sa, FeatureStore.open(b) as sb:
        got = sa.block("image")[: len(rec.lesions)]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(sa.block("image"), sb.block("image"))
        assert sa.lesion_id.tolist() == sb.lesion_id.tolist()
    # with 0.5/0.5 normalisation a black pixel is -1, not ImageNet's (0 - 0.485) / 0.229
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)


def test_wrong_weights_give_one_line_errors(vit_tiny_weights, synth_shards, tmp_path, run_slimp):
    from slimp_cli.core.errors import SlimpError
    from slimp_cli.features.timm_encoder import embed_foreign

    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("these are not weights\n")
    out = tmp_path / "x.h5"
    # through the installed executable: exit 1, one line, nothing written
    r = run_slimp(
        "embed",
        synth_shards,
        "--image-model",
        "vit_tiny_patch16_224",
        "--image-weights",
        not_weights,
        "--input-size",
        32,
        "--out",
        out,
    )
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "cannot read image weights" in lines[0] and str(not_weights) in lines[0]
    assert not out.exists()

    other = tmp_path / "resnet.pth"  # a real state dict of another architecture
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), other)
    pt, _ = vit_tiny_weights
    cases = [
        (other, "vit_tiny_patch16_224", "weights"),
        (pt, "vit_small_patch16_224", "weights"),  # right format, wrong width
        (tmp_path / "missing.pth", "vit_tiny_patch16_224", "not found"),
        (pt, "no_such_model_xyz", "not a timm model"),
    ]
    for weights, model, words in cases:
        with pytest.raises(SlimpError) as exc:
            embed_foreign(synth_shards, out, image_model=model, image_weights=weights, img_size=32)
        message = str(exc.value)
        assert "\n" not in message and words in message, message
        assert not out.exists() and not list(tmp_path.glob(".x.h5*"))


def test_foreign_form_usage_errors(synth_shards, tmp_path, run_slimp, run_cli):
    run_dir = tmp_path  # any folder: usage is checked before anything is read
    out = tmp_path / "x.h5"
    # --image-model takes DATA only: a CHECKPOINT too is bad usage (exit 2)
    r = run_slimp(
        "embed", run_dir, synth_shards, "--image-model", "vit_tiny_patch16_224", "--out", out
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "only argument" in r.stderr
    for args in (
        ["embed", synth_shards, "--image-model", "vit_tiny_patch16_224"],  # no weights
        ["embed", run_dir, "--image-weights", tmp_path / "w.pth"],  # weights, no model
        ["embed", run_dir],  # no DATA
    ):
        r = run_cli(*args, "--out", out)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
