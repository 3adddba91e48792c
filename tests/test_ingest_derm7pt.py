"""Derm7pt (real shared subset): one patient per case, no patient features, malignant =
melanomas + basal cell carcinoma, the melanoma task, and the release's official split."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from derm7pt_release import LAYOUTS, SPLITS, default_splits, make_release

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex
from slimp_cli.ingest import ingest


def test_one_patient_per_case(derm7pt_shards, derm7pt_source):
    table = pd.read_csv(derm7pt_source / "meta.csv")
    manifest = json.loads((derm7pt_shards / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["counts"]["patients"] == 657 == len(table)
    assert manifest["counts"]["unique_lesion_ids"] == 657
    assert manifest["skipped"] == []
    melanoma = table["diagnosis"].str.contains("melanoma").sum()
    bcc = (table["diagnosis"] == "basal cell carcinoma").sum()
    assert bcc == 23 and melanoma == 164
    assert manifest["counts"]["malignant"] == melanoma + bcc  # BCC is a skin cancer too
    assert manifest["counts"]["benign"] == len(table) - melanoma - bcc
    assert any("clinic" in note for note in manifest["notes"])  # missing clinical images are noted


def test_flat_schema_without_patient_features(derm7pt_shards):
    index = ShardIndex.open(derm7pt_shards)
    schema = index.schema
    assert schema.patient_features == [] and not schema.has_patient_features
    assert schema.derived_patient_features == []
    excluded = {e["name"] for e in schema.to_dict()["excluded"]}
    assert "management" in excluded
    assert "management" not in {f["name"] for f in schema.lesion_features}
    classes = set(schema.classes)
    melanomas = sorted(c for c in classes if "melanoma" in c)
    assert len(melanomas) == 6  # in situ, the three thicknesses, metastasis and plain melanoma
    assert schema.malignant == sorted([*melanomas, "basal cell carcinoma"])
    assert schema.to_dict()["melanoma"] == melanomas  # the melanoma task: SM3's DIAG MEL
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


def test_malignancy_per_lesion_follows_the_diagnosis(derm7pt_shards):
    """Each lesion's malignant flag, against a hand rule: melanoma (any kind) or BCC."""
    index = ShardIndex.open(derm7pt_shards)
    lesions = [les for i in range(len(index)) for les in index.patient(i).lesions]
    for les in lesions:
        expected = "melanoma" in les["label"] or les["label"] == "basal cell carcinoma"
        assert les["malignant"] == int(expected), les["label"]
    assert "official_split" not in lesions[0]  # the shared subset has no index files


def test_no_index_files_no_official_split(derm7pt_shards):
    manifest = json.loads((derm7pt_shards / "manifest.json").read_text())
    assert "official_split" not in manifest["counts"]
    assert not any("official split" in note for note in manifest["notes"])


def _cases(out) -> dict[str, dict]:
    index = ShardIndex.open(out)
    return {les["lesion_id"]: les for i in range(len(index)) for les in index.patient(i).lesions}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_official_split_from_the_index_files(layout, derm7pt_source, tmp_path):
    """Each case records the split of its row *position* in meta.csv (in this copy, case_num
    is not the position: every 24th row of the shared table), whatever the layout."""
    root, table, splits = make_release(tmp_path / "rel", derm7pt_source, every=24, layout=layout)
    assert (table["case_num"].astype(int) != list(range(len(table)))).sum() == len(table) - 1
    result = ingest("derm7pt", root, tmp_path / "out", image_size=16)
    cases = _cases(tmp_path / "out")
    assert len(cases) == len(table) == 28
    for split, rows in splits.items():
        for row in rows:
            assert cases[table["case_num"][row]]["official_split"] == split
    counts = result.manifest["counts"]["official_split"]
    assert counts == {s: len(splits[s]) for s in SPLITS} and sum(counts.values()) == 28
    assert any("train_indexes.csv" in note for note in result.manifest["notes"])


def test_official_split_counts_written_cases_only(derm7pt_source, tmp_path):
    """A case whose image is missing is skipped: the counts say what went into the shards."""
    root, table, splits = make_release(tmp_path / "rel", derm7pt_source, every=24)
    table.loc[splits["test"][0], "derm"] = "NEL/no_such_image.jpg"
    table.to_csv(root / "meta" / "meta.csv", index=False)
    result = ingest("derm7pt", root, tmp_path / "out", image_size=16)
    counts = result.manifest["counts"]["official_split"]
    assert counts == {s: len(splits[s]) - (s == "test") for s in SPLITS}


def _broken(n: int) -> dict[str, tuple[dict, str]]:
    good = default_splits(n)
    drop = dict(good, test=good["test"][1:])
    return {
        "out of range": (dict(good, test=[*good["test"], n]), f"index {n} is out of range"),
        "negative": (dict(good, test=[*good["test"], -1]), "index -1 is out of range"),
        "twice": (dict(good, train=[*good["train"], good["train"][0]]), "listed twice in train"),
        "overlap": (
            dict(good, valid=[*good["valid"], good["train"][0]]),
            "in both train_indexes.csv and valid_indexes.csv",
        ),
        "not a number": (dict(good, test=[*good["test"], "x"]), "'x' is not a row number"),
        "missing file": (dict(good, test=None), "but not test_indexes.csv"),
        "uncovered": (drop, f"cover {n - 1} of the {n} rows"),
    }


@pytest.mark.parametrize("case", list(_broken(28)))
def test_index_files_inconsistent_with_meta_csv(case, derm7pt_source, tmp_path):
    splits, message = _broken(28)[case]
    root, _, _ = make_release(tmp_path / "rel", derm7pt_source, every=24, splits=splits)
    with pytest.raises(SlimpError, match=message):
        ingest("derm7pt", root, tmp_path / "out", image_size=16)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_index_file_without_its_column(derm7pt_source, tmp_path):
    root, _, _ = make_release(tmp_path / "rel", derm7pt_source, every=24)
    (root / "meta" / "valid_indexes.csv").write_text("index\n0\n")
    with pytest.raises(SlimpError, match="no 'indexes' column"):
        ingest("derm7pt", root, tmp_path / "out", image_size=16)


def test_inconsistent_index_files_are_one_line_errors(derm7pt_source, tmp_path, run_slimp):
    splits, _ = _broken(28)["overlap"]
    root, _, _ = make_release(tmp_path / "rel", derm7pt_source, every=24, splits=splits)
    res = run_slimp("ingest", "derm7pt", root, tmp_path / "out", "--image-size", "16")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "in both" in lines[0]
