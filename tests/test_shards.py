"""Shard writer and reader: deterministic tars, size caps, random access, refusal of bad folders."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
import webdataset as wds
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.core.paths import write_json
from slimp_cli.data.shards import ShardIndex, ShardWriter, iter_lesions, sanitise_key, unique_keys


def _jpeg(colour: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(out, format="JPEG")
    return out.getvalue()


def _write(out, n_patients: int, *, max_bytes: int = 10**9, max_patients=None):
    writer = ShardWriter(out, max_bytes=max_bytes, max_patients=max_patients)
    for i in range(n_patients):
        lesions = [
            {
                "lesion_id": f"L{i}-{j}",
                "image_id": f"img{i}{j}",
                "image": f"{j:04d}.jpg",
                "label": "a",
                "malignant": 0,
                "fields": {"x": float(j)},
            }
            for j in range(i % 3 + 1)
        ]
        patient = {
            "patient_id": f"P.{i}",
            "fields": {"age": 40 + i},
            "derived": {"n_lesions": len(lesions)},
        }
        writer.write(
            f"P_{i:03d}", patient, lesions, [_jpeg(10 * i + j) for j in range(len(lesions))]
        )
    return writer.commit()


def _finish(out, shards):
    write_json(
        out / "schema.json",
        {"patient_features": [], "lesion_features": [], "derived_patient_features": []},
    )
    write_json(out / "manifest.json", {"complete": True, "shards": [s.__dict__ for s in shards]})


def test_sanitise_and_unique_keys():
    assert sanitise_key("PAT_1.2/x y") == "PAT_1_2_x_y"
    keys = unique_keys(["a.b", "a_b", "c"])
    assert keys["c"] == "c"
    assert len(set(keys.values())) == 3
    assert all("." not in k for k in keys.values())


def test_writer_is_deterministic_and_stamps_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(tmp_path / "a", 5)
    second = _write(tmp_path / "b", 5)
    assert [s.sha256 for s in first] == [s.sha256 for s in second]
    assert (tmp_path / "a" / first[0].name).read_bytes() == (
        tmp_path / "b" / second[0].name
    ).read_bytes()
    with tarfile.open(tmp_path / "a" / first[0].name) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }
    assert [m.name for m in members[:3]] == [
        "P_000.patient.json",
        "P_000.lesions.json",
        "P_000.0000.jpg",
    ]


def test_size_cap_splits_between_patients(tmp_path):
    shards = _write(tmp_path, 12, max_bytes=6000)
    assert len(shards) > 2
    assert sum(s.patients for s in shards) == 12
    keys = []
    for s in shards:
        with tarfile.open(tmp_path / s.name) as tar:
            keys.append({m.name.split(".")[0] for m in tar.getmembers()})
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1 :])  # no patient split
    (tmp_path / "capped").mkdir()
    assert len(_write(tmp_path / "capped", 12, max_patients=5)) == 3


def test_index_random_access_matches_written(tmp_path):
    shards = _write(tmp_path, 7, max_bytes=8000)
    _finish(tmp_path, shards)
    index = ShardIndex.open(tmp_path)
    assert len(index) == 7
    record = index.patient(4)
    assert record.patient_id == "P.4" and record.key == "P_004"
    assert record.fields == {"age": 44}
    assert record.derived == {"n_lesions": 2}
    assert [les["lesion_id"] for les in record.lesions] == ["L4-0", "L4-1"]
    assert record.read_image(1) == _jpeg(41)
    assert sum(1 for _ in iter_lesions(index)) == sum(i % 3 + 1 for i in range(7))
    # plain webdataset reads the same samples
    urls = [str(tmp_path / s.name) for s in shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == index.keys
    assert json.loads(samples[4]["lesions.json"]) == record.lesions


def test_writer_abort_removes_everything(tmp_path):
    writer = ShardWriter(tmp_path, max_bytes=3000)
    for i in range(5):
        writer.write(f"k{i}", {"patient_id": str(i)}, [{"image": "0000.jpg"}], [_jpeg(i)])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_index_refuses_bad_folders(tmp_path):
    with pytest.raises(SlimpError, match="no such folder"):
        ShardIndex.open(tmp_path / "nope")
    with pytest.raises(SlimpError, match="manifest.json"):
        ShardIndex.open(tmp_path)
    shards = _write(tmp_path, 2)
    _finish(tmp_path, shards)
    write_json(
        tmp_path / "manifest.json", {"complete": False, "shards": [s.__dict__ for s in shards]}
    )
    with pytest.raises(SlimpError, match="did not complete"):
        ShardIndex.open(tmp_path)
    write_json(
        tmp_path / "manifest.json", {"complete": True, "shards": [{"name": "shard-000009.tar"}]}
    )
    with pytest.raises(SlimpError, match="missing"):
        ShardIndex.open(tmp_path)
    (tmp_path / "schema.json").unlink()
    with pytest.raises(SlimpError, match="schema.json"):
        ShardIndex.open(tmp_path)


def test_patient_records_are_parsed_once_while_cached(synth_shards, monkeypatch):
    """Lesion-by-lesion readers (embed) must not re-parse a patient's JSON for every lesion."""
    import slimp_cli.data.shards as shards_mod

    index = shards_mod.ShardIndex.open(synth_shards)
    reads = []
    real = shards_mod._read_member
    monkeypatch.setattr(shards_mod, "_read_member", lambda *a: reads.append(a) or real(*a))
    first = index.patient(0)
    for _ in range(50):
        assert index.patient(0) is first
    assert len(reads) == 2  # patient.json + lesions.json, once
    index.patient(1)
    assert index.patient(0) is first  # both fit the default budget

    # a budget of two records' JSON: reading patients 1 and 2 pushes patient 0 out
    def size(i: int) -> int:  # bytes of patient i's JSON members
        return sum(v[1] for k, v in index._entries[i].members.items() if k.endswith(".json"))

    index.CACHE_BYTES = size(1) + size(2)
    index.patient(1), index.patient(2)
    assert 0 not in index._cache and index._cache_bytes <= index.CACHE_BYTES
    reads.clear()
    again = index.patient(0)
    assert len(reads) == 2 and again.patient_id == first.patient_id


def test_a_tar_index_is_read_once_per_file_version(synth_shards, tmp_path, monkeypatch):
    """Opening one folder again reuses the tar headers already read; a shard replaced by
    another file (ingest publishes by rename) is read again."""
    import shutil

    import slimp_cli.data.shards as shards_mod

    folder = shutil.copytree(synth_shards, tmp_path / "shards")
    reads = []
    real = shards_mod._read_tar_index
    monkeypatch.setattr(shards_mod, "_read_tar_index", lambda p: reads.append(p) or real(p))
    first = shards_mod.ShardIndex.open(folder)
    n = len(reads)
    assert n >= 1
    again = shards_mod.ShardIndex.open(folder)
    assert len(reads) == n and again.keys == first.keys
    shard = reads[0]
    shutil.copy(shard, tmp_path / "copy.tar")
    os.replace(tmp_path / "copy.tar", shard)  # same bytes, a new file
    shards_mod.ShardIndex.open(folder)
    assert reads[n:] == [shard]
