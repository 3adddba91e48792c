"""PAD-UFES-20 (real shared subset): counts, schema, shards readable, bad input, strict, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex, iter_lesions
from slimp_cli.ingest import ingest


def slimp(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (exit status and stderr included)."""
    return subprocess.run(
        [sys.executable, "-m", "slimp_cli.cli", *map(str, args)], capture_output=True, text=True
    )


def test_counts_and_every_image_decodes(pad_shards, pad_source):
    manifest = json.loads((pad_shards / "manifest.json").read_text())
    table = pd.read_csv(pad_source / "metadata.csv")
    assert manifest["complete"] is True
    assert manifest["counts"]["patients"] == 418 == table["patient_id"].nunique()
    assert manifest["counts"]["lesions"] == 531 == len(table)
    assert manifest["skipped"] == [] and manifest["warnings"] == []
    malignant = table["diagnostic"].isin(["BCC", "MEL", "SCC"]).sum()
    assert manifest["counts"]["malignant"] == malignant
    index = ShardIndex.open(pad_shards)
    size = manifest["options"]["image_size"]
    n = 0
    for _, j, record in iter_lesions(index):
        image = Image.open(io.BytesIO(record.read_image(j)))
        image.load()
        assert image.size == (size, size) and image.mode == "RGB"
        lesion = record.lesions[j]
        assert lesion["malignant"] == int(lesion["label"] in ("BCC", "MEL", "SCC"))
        n += 1
    assert n == 531
    for shard in manifest["shards"]:
        assert (
            hashlib.sha256((pad_shards / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
        )


def test_plain_webdataset_reads_every_patient(pad_shards):
    urls = sorted(str(p) for p in pad_shards.glob("shard-*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 418
    assert len({s["__key__"] for s in samples}) == 418
    sample = samples[0]
    lesions = json.loads(sample["lesions.json"])
    assert all(les["image"] in sample for les in lesions)


def test_schema_excludes_biopsed_and_splits_levels(pad_shards):
    schema = json.loads((pad_shards / "schema.json").read_text())
    excluded = {e["name"]: e["reason"] for e in schema["excluded"]}
    assert "biopsed" in excluded and "leak" in excluded["biopsed"]
    assert len(schema["patient_features"]) == 12
    assert len(schema["lesion_features"]) == 9
    assert [f["name"] for f in schema["derived_patient_features"]] == ["n_lesions"]
    names = {f["name"] for f in schema["patient_features"] + schema["lesion_features"]}
    assert "n_lesions" not in names and "biopsed" not in names
    assert schema["malignant"] == ["BCC", "MEL", "SCC"]
    age = next(f for f in schema["patient_features"] if f["name"] == "age")
    assert 20 < age["mean"] < 90 and age["std"] > 1
    background = next(f for f in schema["patient_features"] if f["name"] == "background_father")
    assert 0.2 < background["missing_rate"] < 0.6 and "POMERANIA" in background["vocab"]
    record = ShardIndex.open(pad_shards).patient(0)
    assert "biopsed" not in record.lesions[0]["fields"]


@pytest.fixture()
def corrupted_pad(tmp_path, pad_source):
    """A copy of the PAD subset (images linked) with one truncated JPEG, one missing file, one age 'abc'."""
    table = pd.read_csv(pad_source / "metadata.csv", dtype=str, keep_default_na=False)
    src = tmp_path / "pad"
    (src / "images").mkdir(parents=True)
    files = {p.stem: p for p in (pad_source / "images").iterdir()}
    truncated, missing, bad_age = 5, 10, 20  # 0-based data rows -> manifest rows 6, 11, 21
    for i, img_id in enumerate(table["img_id"]):
        path = files[img_id.rsplit(".", 1)[0]]
        if i == truncated:
            data = path.read_bytes()
            (src / "images" / path.name).write_bytes(data[: len(data) // 3])
        elif i != missing:
            (src / "images" / path.name).symlink_to(path)
    table.loc[bad_age, "age"] = "abc"
    table.to_csv(src / "metadata.csv", index=False)
    return src, table


def test_corrupted_copy_skips_and_warns(corrupted_pad, tmp_path):
    src, table = corrupted_pad
    out = tmp_path / "out"
    result = slimp("ingest", "pad-ufes-20", src, out, "--image-size", "32", "--workers", "2")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {s["row"]: s for s in manifest["skipped"]}
    assert sorted(skipped) == [6, 11]
    assert skipped[6]["kind"] == "bad_image" and skipped[6]["id"] == table["img_id"][5]
    assert skipped[11]["kind"] == "missing_image" and "not found" in skipped[11]["reason"]
    assert [(w["row"], w["column"], w["value"]) for w in manifest["warnings"]] == [
        (21, "age", "abc")
    ]
    assert manifest["counts"]["lesions"] == 529
    assert "skipped" in result.stdout + result.stderr


def test_strict_fails_and_leaves_no_shards(corrupted_pad, tmp_path):
    src, _ = corrupted_pad
    out = tmp_path / "strict"
    result = slimp(
        "ingest", "pad-ufes-20", src, out, "--image-size", "32", "--workers", "1", "--strict"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: --strict") and "Traceback" not in result.stderr
    assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()
    assert not list(out.glob(".*")) if out.exists() else True


def test_strict_fails_on_image_error_found_late(corrupted_pad, tmp_path):
    """Only a truncated image (found while decoding): strict still writes nothing."""
    src, table = corrupted_pad
    table.loc[20, "age"] = "50"
    table = table.drop(index=10)
    table.to_csv(src / "metadata.csv", index=False)
    out = tmp_path / "late"
    with pytest.raises(SlimpError, match="not decodable"):
        ingest("pad-ufes-20", src, out, image_size=32, workers=2, strict=True)
    # the OUT this ingest created is removed; nothing (manifest, shards, temporaries) is left
    assert not out.exists() or list(out.iterdir()) == []


def test_byte_identical_reruns_any_worker_count(pad_source, pad_shards, tmp_path):
    manifest = json.loads((pad_shards / "manifest.json").read_text())
    ingest(
        "pad-ufes-20",
        pad_source,
        tmp_path / "again",
        image_size=manifest["options"]["image_size"],
        workers=1,
    )
    first = manifest["shards"]
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())["shards"]
    assert [s["sha256"] for s in first] == [s["sha256"] for s in second]
    for s in first:
        assert (pad_shards / s["name"]).read_bytes() == (
            tmp_path / "again" / s["name"]
        ).read_bytes()
    assert (pad_shards / "schema.json").read_bytes() == (
        tmp_path / "again" / "schema.json"
    ).read_bytes()


def test_existing_output_needs_overwrite(pad_source, tmp_path):
    subset = tmp_path / "small"
    subset.mkdir()
    table = pd.read_csv(pad_source / "metadata.csv", dtype=str, keep_default_na=False).head(12)
    table.to_csv(subset / "metadata.csv", index=False)
    (subset / "images").symlink_to(pad_source / "images")
    out = tmp_path / "out"
    ingest("pad-ufes-20", subset, out, image_size=16, max_shard_size=20_000)
    n_shards = len(list(out.glob("shard-*.tar")))
    assert n_shards > 1
    with pytest.raises(SlimpError, match="--overwrite"):
        ingest("pad-ufes-20", subset, out, image_size=16)
    result = ingest("pad-ufes-20", subset, out, image_size=16, overwrite=True)
    assert len(list(out.glob("shard-*.tar"))) == len(result.manifest["shards"]) == 1
    assert result.manifest["counts"]["lesions"] == 12


def test_missing_required_column_names_it(pad_source, tmp_path):
    src = tmp_path / "pad"
    src.mkdir()
    table = pd.read_csv(pad_source / "metadata.csv", dtype=str, keep_default_na=False).head(5)
    table.drop(columns=["region"]).to_csv(src / "metadata.csv", index=False)
    with pytest.raises(SlimpError, match=r"metadata.csv: missing required column 'region'"):
        ingest("pad-ufes-20", src, tmp_path / "out")
    table.drop(columns=["img_id"]).to_csv(src / "metadata.csv", index=False)
    with pytest.raises(SlimpError, match="'img_id'"):
        ingest("pad-ufes-20", src, tmp_path / "out")
    table.head(0).to_csv(src / "metadata.csv", index=False)
    with pytest.raises(SlimpError, match="no data rows"):
        ingest("pad-ufes-20", src, tmp_path / "out")
    (src / "metadata.csv").write_text("")
    with pytest.raises(SlimpError, match="empty"):
        ingest("pad-ufes-20", src, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
