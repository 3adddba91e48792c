"""The SLICE-3D-shaped generated cohort: the ISIC 2024 training layout, read by the real
`slice-3d` adapter and schema, deterministic, with images that follow their metadata."""

from __future__ import annotations

import csv
import hashlib
import io

import h5py
import numpy as np
import pytest
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import load_dataset_schema
from slimp_cli.ingest.synth import SLICE3D_COLUMNS, generate_slice3d_cohort


def _digest(folder) -> str:
    h = hashlib.sha256((folder / "train-metadata.csv").read_bytes())
    with h5py.File(folder / "train-image.hdf5") as f:
        for key in sorted(f):
            h.update(key.encode() + bytes(f[key][()]))
    return h.hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("slice3d") / "cohort"
    return out, generate_slice3d_cohort(out, patients=24, seed=0, image_size=32, lesions=(4, 9))


def test_the_table_has_every_column_of_the_slice3d_schema(cohort):
    out, result = cohort
    schema = load_dataset_schema("slice-3d")
    with open(out / "train-metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(SLICE3D_COLUMNS)
    named = (
        [f["name"] for f in schema["patient_features"] + schema["lesion_features"]]
        + [e["name"] for e in schema["excluded"]]
        + [schema[k] for k in ("patient_id", "lesion_id", "image", "label")]
    )
    assert set(named) <= set(SLICE3D_COLUMNS)  # the schema finds everything it names
    for feature in schema["patient_features"] + schema["lesion_features"]:
        filled = sum(bool(r[feature["name"]]) for r in rows)
        assert filled >= 0.9 * len(rows), feature["name"]  # SLICE-3D misses almost nothing
    per_patient = np.unique([r["patient_id"] for r in rows], return_counts=True)[1]
    assert len(per_patient) == 24 and per_patient.min() >= 4 and per_patient.max() <= 9
    assert len(rows) == result.images == result.lesions
    assert sum(r["target"] == "1" for r in rows) == result.malignant > 0
    # the release names a lesion for every malignant one and leaves most benign ones blank
    assert all(r["lesion_id"] for r in rows if r["target"] == "1")
    assert sum(not r["lesion_id"] for r in rows) > len(rows) / 2


def test_ingested_by_the_slice3d_adapter_with_the_leaks_excluded(cohort, tmp_path):
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.ingest import ingest

    out, result = cohort
    res = ingest("slice-3d", out, tmp_path / "shards", image_size=32, workers=1)
    counts = res.manifest["counts"]
    assert counts["patients"] == 24 and counts["images"] == result.images
    assert counts["malignant"] == result.malignant and counts["skipped_rows"] == 0
    index = ShardIndex.open(tmp_path / "shards")
    fields = set(index.patient(0).lesions[0]["fields"]) | set(index.patient(0).fields)
    leaks = {"iddx_full", "iddx_1", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence", "target"}
    assert fields and not fields & leaks
    assert "tbp_lv_L" in fields and "age_approx" in fields


def test_same_seed_same_bytes_and_refuses_a_second_cohort(cohort, tmp_path):
    out, _ = cohort
    again = tmp_path / "again"
    generate_slice3d_cohort(again, patients=24, seed=0, image_size=32, lesions=(4, 9))
    assert _digest(again) == _digest(out)
    generate_slice3d_cohort(tmp_path / "other", patients=24, seed=1, image_size=32, lesions=(4, 9))
    assert _digest(tmp_path / "other") != _digest(out)
    with pytest.raises(SlimpError, match="already holds"):
        generate_slice3d_cohort(again, patients=2)
    with pytest.raises(SlimpError, match="lesions per patient"):
        generate_slice3d_cohort(tmp_path / "bad", patients=2, lesions=(5, 2))


def test_images_follow_their_metadata(cohort):
    """The lesion's lightness (tbp_lv_L) and the skin's (tbp_lv_Lext) are the image's."""
    out, _ = cohort
    with open(out / "train-metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    centre, border, L, Lext = [], [], [], []
    with h5py.File(out / "train-image.hdf5") as h5:
        for r in rows:
            img = np.asarray(Image.open(io.BytesIO(bytes(h5[r["isic_id"]][()]))).convert("L"))
            centre.append(img[14:18, 14:18].mean())
            border.append(np.concatenate([img[:3].ravel(), img[-3:].ravel()]).mean())
            L.append(float(r["tbp_lv_L"]))
            Lext.append(float(r["tbp_lv_Lext"]))
    assert np.corrcoef(L, centre)[0, 1] > 0.6
    assert np.corrcoef(Lext, border)[0, 1] > 0.6
