"""`slimp synth --paired`: a Derm7pt-like cohort with a dermoscopic and a clinical image per case."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
from PIL import Image

from slimp_cli.data.shards import ShardIndex
from slimp_cli.ingest.synth_paired import CRITERIA_VALUES, generate_paired_cohort


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    a = generate_paired_cohort(tmp_path / "a", cases=6, seed=1, image_size=32)
    generate_paired_cohort(tmp_path / "b", cases=6, seed=1, image_size=32)
    generate_paired_cohort(tmp_path / "c", cases=6, seed=2, image_size=32)
    assert a.images == 12 - a.missing_clinical
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_cli_writes_a_cohort_that_ingest_synth_reads(tmp_path, run_cli):
    res = run_cli("synth", tmp_path / "c", "--paired", "--patients", "40", "--image-size", "32")
    assert res.exit_code == 0, res.output
    assert "40 paired cases" in res.stdout
    table = pd.read_csv(tmp_path / "c" / "metadata.csv", dtype=str)
    for column, values in CRITERIA_VALUES.items():
        assert set(table[column]) <= set(values), column
    missing = [c for c in table["clinic"] if not (tmp_path / "c" / "images" / c).exists()]
    res = run_cli("ingest", "synth", tmp_path / "c", tmp_path / "s", "--workers", "1")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["counts"]["patients"] == manifest["counts"]["unique_lesion_ids"] == 40
    assert manifest["counts"]["images"] == 80 - len(missing)
    summary = manifest["modalities"]
    assert summary["images"] == {"clinical": 40 - len(missing), "dermoscopic": 40}
    assert summary["lesions_complete"] == 40 - len(missing)
    assert [m["missing"] for m in summary["missing"]] == [["clinical"]] * len(missing)
    index = ShardIndex.open(tmp_path / "s")
    for i in range(len(index)):
        lesions = index.patient(i).lesions
        assert len({les["lesion_id"] for les in lesions}) == 1  # one case per patient
        assert sorted(les["modality"] for les in lesions)[-1] == "dermoscopic"
    schema = index.schema
    assert {f["name"] for f in schema.lesion_features} >= set(CRITERIA_VALUES)


def _centre_colour(path, half: int) -> np.ndarray:
    arr = np.asarray(Image.open(path), dtype=np.float32)
    s = arr.shape[0] // 2
    return np.median(arr[s - half : s + half, s - half : s + half].reshape(-1, 3), axis=0)


def test_the_two_images_of_a_case_share_what_pairs_them(paired_dir):
    """The lesion's colour is shared across modalities: matching each dermoscopic image to the
    clinical image whose centre colour is most similar (cosine of centred medians) finds its own
    case far above chance."""
    table = pd.read_csv(paired_dir / "metadata.csv", dtype=str)
    rows = [r for r in table.itertuples() if (paired_dir / "images" / r.clinic).exists()]
    assert len(rows) == 63  # 1 of 64 clinical files missing (seed 0)
    derm = np.stack([_centre_colour(paired_dir / "images" / r.derm, 6) for r in rows])
    clinic = np.stack([_centre_colour(paired_dir / "images" / r.clinic, 2) for r in rows])
    derm, clinic = derm - derm.mean(0), clinic - clinic.mean(0)
    sim = (derm / np.linalg.norm(derm, axis=1, keepdims=True)) @ (
        clinic / np.linalg.norm(clinic, axis=1, keepdims=True)
    ).T
    ranks = (sim > sim.diagonal()[:, None]).sum(1) + 1
    assert np.mean(ranks <= 5) > 0.25  # chance: 5 / 63 = 0.08
