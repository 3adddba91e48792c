"""Derm7pt (real shared subset): one patient per case, no patient features, melanoma by substring."""

from __future__ import annotations

import json

import pandas as pd

from slimp_cli.shards import ShardIndex


def test_one_patient_per_case(derm7pt_shards, derm7pt_source):
    table = pd.read_csv(derm7pt_source / "meta.csv")
    manifest = json.loads((derm7pt_shards / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["counts"]["patients"] == 657 == len(table)
    assert manifest["counts"]["unique_lesion_ids"] == 657
    assert manifest["skipped"] == []
    melanoma = table["diagnosis"].str.contains("melanoma").sum()
    assert manifest["counts"]["malignant"] == melanoma
    assert any("clinic" in note for note in manifest["notes"])  # missing clinical images are noted


def test_flat_schema_without_patient_features(derm7pt_shards):
    index = ShardIndex.open(derm7pt_shards)
    schema = index.schema
    assert schema.patient_features == [] and not schema.has_patient_features
    assert schema.derived_patient_features == []
    excluded = {e["name"] for e in schema.to_dict()["excluded"]}
    assert "management" in excluded
    assert "management" not in {f["name"] for f in schema.lesion_features}
    assert all(m.startswith("melanoma") for m in schema.malignant) and len(schema.malignant) >= 4
    record = index.patient(0)
    assert record.fields == {}
    assert record.lesions[0]["lesion_id"] == record.patient_id
    assert "management" not in record.lesions[0]["fields"]


def test_images_record_their_modality_and_unpaired_cases_are_flagged(
    derm7pt_shards, derm7pt_source
):
    """Each image says which modality it is; a case without its clinical image is kept and
    flagged. In this subset no clinical file exists: the 7 cases whose `clinic` names a file
    name their dermoscopic file (the release's own duplicate), which is not added twice."""
    table = pd.read_csv(derm7pt_source / "meta.csv")
    manifest = json.loads((derm7pt_shards / "manifest.json").read_text())
    index = ShardIndex.open(derm7pt_shards)
    modalities = [les["modality"] for i in range(len(index)) for les in index.patient(i).lesions]
    assert set(modalities) == {"dermoscopic"} and len(modalities) == len(table)
    summary = manifest["modalities"]
    assert summary["declared"] == ["clinical", "dermoscopic"]
    assert summary["images"] == {"clinical": 0, "dermoscopic": len(table)}
    assert summary["lesions_complete"] == 0
    assert summary["lesions_missing"] == {"clinical": len(table)}
    assert len(summary["missing"]) == len(table)
    assert summary["missing"][0] == {"lesion_id": "0", "row": 1, "missing": ["clinical"]}
    same_file = int((table["clinic"] == table["derm"]).sum())
    assert same_file == 7
    assert any(
        f"{same_file} optional 'clinic' images are the row's main image" in n
        for n in manifest["notes"]
    )
    assert any(
        "lack an image of a declared modality (clinical: 657)" in n for n in manifest["notes"]
    )
