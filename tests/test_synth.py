"""The generated cohort: deterministic, hierarchical, with missing values and images that follow metadata."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex
from slimp_cli.ingest.synth import COLOURS, generate_cohort


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_cohort(tmp_path / "a", patients=15, seed=3, image_size=32)
    b = generate_cohort(tmp_path / "b", patients=15, seed=3, image_size=32)
    generate_cohort(tmp_path / "c", patients=15, seed=4, image_size=32)
    assert a.images == b.images
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_refuses_existing_cohort_and_bad_sizes(tmp_path):
    generate_cohort(tmp_path, patients=2, seed=0, image_size=32)
    with pytest.raises(SlimpError, match="already holds"):
        generate_cohort(tmp_path, patients=2)
    with pytest.raises(SlimpError, match="patients"):
        generate_cohort(tmp_path / "x", patients=0)


def test_hierarchy_and_missing_values(synth_dir):
    table = pd.read_csv(synth_dir / "metadata.csv", dtype=str, keep_default_na=False)
    per_patient = table.groupby("patient_id")["lesion_id"].nunique()
    assert per_patient.min() >= 1 and per_patient.max() > 1
    assert (table.groupby("lesion_id").size() > 1).any()  # some lesions have a second image
    for column in ("age", "diameter_mm", "itch", "family_history"):
        rate = (table[column] == "").mean()
        assert 0.03 < rate < 0.45, (column, rate)
    assert (table["colour"] == "").sum() == 0
    assert set(table["diagnosis"]) >= {"melanoma", "nevus"}


def test_images_follow_metadata(tmp_path):
    """Skin type darkens the background; diameter grows the lesion; colour shows in the lesion."""
    generate_cohort(tmp_path, patients=150, seed=1, image_size=48)
    table = pd.read_csv(tmp_path / "metadata.csv", dtype=str, keep_default_na=False)
    corner, area, centre = [], [], []
    for name in table["image"]:
        pixels = np.asarray(Image.open(tmp_path / "images" / name), dtype=np.float32)
        corner.append(pixels[:6, :6].mean())
        bg = np.median(
            np.concatenate([pixels[:4].reshape(-1, 3), pixels[-4:].reshape(-1, 3)]), axis=0
        )
        area.append((np.abs(pixels - bg).sum(axis=2) > 60).mean())
        centre.append(pixels[22:26, 22:26].reshape(-1, 3).mean(axis=0))
    fitz = table["fitzpatrick"].astype(float)
    assert np.corrcoef(fitz, corner)[0, 1] < -0.7
    known = table["diameter_mm"] != ""
    diam = table.loc[known, "diameter_mm"].astype(float)
    assert np.corrcoef(diam, np.asarray(area)[known.to_numpy()])[0, 1] > 0.6
    centre = np.asarray(centre)
    pink = (table["colour"] == "pink").to_numpy()
    black = (table["colour"] == "black").to_numpy()
    assert pink.any() and black.any()
    assert centre[pink].mean() > centre[black].mean() + 60
    assert len(COLOURS) == 6


def test_ingest_synth_without_schema(synth_dir, synth_shards):
    table = pd.read_csv(synth_dir / "metadata.csv", dtype=str, keep_default_na=False)
    index = ShardIndex.open(synth_shards)
    manifest = json.loads((synth_shards / "manifest.json").read_text())
    assert len(index) == table["patient_id"].nunique() == manifest["counts"]["patients"]
    assert manifest["counts"]["images"] == len(table)
    assert manifest["counts"]["malignant"] == table["diagnosis"].isin(["melanoma", "bcc"]).sum()
    schema = index.schema
    assert [f["name"] for f in schema.derived_patient_features] == ["n_lesions"]
    assert "biopsied" in {e["name"] for e in schema.to_dict()["excluded"]}
    record = index.patient(0)
    assert "biopsied" not in record.lesions[0]["fields"]
    assert Image.open(__import__("io").BytesIO(record.read_image(0))).size == (32, 32)
