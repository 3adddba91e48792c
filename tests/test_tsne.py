"""`probe --plots`: the t-SNE figure of Fig. 6 and the data behind it."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from slimp_cli.eval.tsne import feature_sets, subsample, write_tsne


def test_feature_sets_are_table6_prefixes():
    assert feature_sets(["patient", "image", "lesion"]) == [
        ("image",),
        ("image", "lesion"),
        ("image", "lesion", "patient"),
    ]
    assert feature_sets(["image"]) == [("image",)]
    assert feature_sets(["lesion", "image"]) == [("image",), ("image", "lesion")]


def test_subsample_is_stratified_capped_and_drops_unknown():
    mal = np.array([0] * 700 + [1] * 300 + [-1] * 50)
    rows = subsample(mal, 100, seed=0)
    assert len(rows) == 100 and (np.diff(rows) > 0).all()
    assert (mal[rows] == 1).sum() == 30 and (mal[rows] == -1).sum() == 0
    np.testing.assert_array_equal(rows, subsample(mal, 100, seed=0))
    assert len(subsample(mal, 5000, seed=0)) == 1000


def test_probe_plots_write_tsne_png_and_json(write_store, tmp_path, run_cli):
    rng = np.random.default_rng(0)
    n = 150
    mal = (rng.random(n) < 0.4).astype(np.int8)
    mal[:5] = -1
    feats = {
        "image": rng.normal(size=(n, 8)).astype(np.float32),
        "lesion": (rng.normal(size=(n, 8)) + 3 * mal[:, None]).astype(np.float32),
        "patient": rng.normal(size=(n, 8)).astype(np.float32),
    }
    store = write_store(
        tmp_path / "s.h5", features=feats, patient_id=np.arange(n), label=mal.clip(0), malignant=mal
    )
    r = run_cli("probe", store, "--plots", tmp_path / "plots", "--seeds", "0", "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "plots" / "tsne.json").read_text())
    assert list(data["panels"]) == ["image", "image + lesion", "image + lesion + patient"]
    assert data["rows"] == n - 5 and len(data["malignant"]) == n - 5
    for xy in data["panels"].values():
        assert np.asarray(xy).shape == (n - 5, 2)
    img = np.asarray(Image.open(tmp_path / "plots" / "tsne.png").convert("L"))
    assert img.shape[1] > 3 * img.shape[0] / 2 and img.std() > 10
    # seeded: the same coordinates again
    write_tsne(store, tmp_path / "again", seed=0)
    again = json.loads((tmp_path / "again" / "tsne.json").read_text())
    assert again["panels"] == data["panels"]
    # where the lesion block separates the classes, the image+lesion panel does too
    xy = np.asarray(data["panels"]["image + lesion"])
    m = np.asarray(data["malignant"])
    gap = np.linalg.norm(xy[m == 1].mean(0) - xy[m == 0].mean(0))
    spread = np.sqrt(xy[m == 0].var(0).sum())
    assert gap > spread
