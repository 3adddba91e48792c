"""`extrapolate --examples K --out DIR`: the qualitative retrieval panel (paper Fig. 7)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from slimp_cli.data.shards import ShardIndex
from slimp_cli.features.store import FeatureStore


def test_examples_panel_shows_the_retrieved_reference_lesions(
    pad_run, pad_store, pad_shards, derm7pt_shards, tmp_path, run_slimp
):
    from slimp_cli.features.embed import embed

    target = embed(pad_run, derm7pt_shards, tmp_path / "d7.h5", image_only=True)
    out = tmp_path / "fig7"
    r = run_slimp(
        "extrapolate", pad_store, target, "--examples", 3, "--out", out, "--device", "cpu"
    )
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(out / "retrieval-examples.png").convert("L"))
    assert img.shape[0] > 600 and img.shape[1] > 600 and img.std() > 10
    report = json.loads((out / "retrieval-examples.json").read_text())
    assert len(report["examples"]) == 3
    assert sum(ex["malignant"] for ex in report["examples"]) == 2  # half malignant, rounded up
    assert report["units"] == {"diameter_1": "mm", "diameter_2": "mm"}  # PAD's lesion fields

    ref_index = ShardIndex.open(pad_shards)  # what pad_store was embedded from
    with FeatureStore.open(pad_store) as ref, FeatureStore.open(target) as tgt:
        lesion = ref.block("lesion")
        ref_lesion_id, ref_patient_id = ref.lesion_id, ref.patient_id
        image = tgt.block("image")
        tgt_lesion_id = tgt.lesion_id
    by_id = {}
    for p in range(len(ref_index)):
        rec = ref_index.patient(p)
        for les in rec.lesions:
            by_id[(rec.patient_id, les["lesion_id"])] = les["fields"]
    for ex in report["examples"]:
        assert tgt_lesion_id[ex["target_row"]] == ex["lesion_id"]
        q = image[ex["target_row"]]
        cos = lesion @ q / (np.linalg.norm(lesion, axis=1) * np.linalg.norm(q))
        hits = ex["retrieved"]
        rows = [h["reference_row"] for h in hits]
        sims = [h["similarity"] for h in hits]
        # the top 3 best first (twin images of one lesion share metadata: ties in any order)
        np.testing.assert_allclose(sims, np.sort(cos)[::-1][:3], atol=1e-5)
        np.testing.assert_allclose(cos[rows], sims, atol=1e-5)
        assert len(set(rows)) == 3
        for h in hits:
            row = h["reference_row"]
            assert (h["patient_id"], h["lesion_id"]) == (ref_patient_id[row], ref_lesion_id[row])
            # the metadata row shown is the reference lesion's own, from its shards
            assert h["lesion_metadata"] == by_id[(h["patient_id"], h["lesion_id"])]
            assert "age" in h["patient_metadata"]


def test_examples_errors(pad_store, derm7pt_shards, pad_run, tmp_path, run_slimp, run_cli):
    from slimp_cli.features.embed import embed

    target = embed(pad_run, derm7pt_shards, tmp_path / "d7.h5", image_only=True)
    r = run_cli("extrapolate", pad_store, target, "--examples", 2)  # no --out
    assert r.exit_code == 2, r.output
    # shards that are not the ones the reference was embedded from
    r = run_slimp(
        "extrapolate",
        pad_store,
        target,
        "--examples",
        2,
        "--out",
        tmp_path / "x",
        "--reference-data",
        derm7pt_shards,
        "--device",
        "cpu",
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "manifest sha256 differs" in lines[0]
    # checked before anything is written: the target has no pseudo features yet
    with FeatureStore.open(target) as tgt:
        assert tgt.pseudo_strategies == []
    assert not (tmp_path / "x").exists()
