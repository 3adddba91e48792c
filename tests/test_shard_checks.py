"""Shards are verified when opened: counts always, sha256 on request, `slimp verify` and
`ingest --check` (issue 13, part 3)."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex, verify_shards
from slimp_cli.ingest import ingest


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory, synth_dir):
    """The generated cohort ingested into 3 shards of 20 patients (with --check)."""
    out = tmp_path_factory.mktemp("three_shards") / "data"
    result = ingest("synth", synth_dir, out, image_size=16, max_patients_per_shard=20, check=True)
    assert [s["patients"] for s in result.manifest["shards"]] == [20, 20, 20]
    return out


@pytest.fixture()
def data(three_shards, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(three_shards, tmp_path / "data")


def _one_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
    return lines[0]


def _cut_before_last_patient(shard) -> None:
    """Truncate a shard where its last patient starts: still a valid tar, one patient short."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    last_key = members[-1].name.split(".", 1)[0]
    first = next(m for m in members if m.name.startswith(last_key + "."))
    with open(shard, "r+b") as fh:
        fh.truncate(first.offset)


def test_a_shard_cut_at_a_patient_boundary_is_detected_and_named(data, run_slimp):
    shard = data / "shard-000001.tar"
    _cut_before_last_patient(shard)
    with tarfile.open(shard) as tar:  # what used to be read silently
        assert len({m.name.split(".", 1)[0] for m in tar}) == 19
    with pytest.raises(
        SlimpError, match=r"shard-000001.tar: shard holds 19 patients where manifest.json lists 20"
    ):
        ShardIndex.open(data)
    line = _one_line(run_slimp("verify", data))
    assert "shard-000001.tar" in line and "19 patients" in line


def test_a_changed_byte_is_found_by_sha256_on_request(data, run_slimp):
    shard = data / "shard-000002.tar"
    raw = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        image = next(m for m in tar if m.name.endswith(".jpg"))
    raw[image.offset_data + image.size // 2] ^= 0xFF  # same size, same counts
    shard.write_bytes(bytes(raw))
    assert len(ShardIndex.open(data)) == 60  # counts and sizes still match: opening is cheap
    with pytest.raises(SlimpError, match=r"shard-000002.tar: shard holds a sha256 that differs"):
        ShardIndex.open(data, verify=True)
    with pytest.raises(SlimpError, match=r"shard-000002.tar: .*sha256"):
        verify_shards(data)
    from slimp_cli.train import pretrain

    with pytest.raises(SlimpError, match=r"shard-000002.tar: .*sha256"):
        pretrain(data, data.parent / "run", train={"device": "cpu"}, verify=True)
    assert "shard-000002.tar" in _one_line(run_slimp("verify", data))


def test_verify_and_ingest_check_pass_on_intact_data(three_shards, synth_dir, tmp_path, run_slimp):
    assert verify_shards(three_shards) == {
        "shards": 3,
        "patients": 60,
        "images": _images(three_shards),
    }
    res = run_slimp("verify", three_shards)
    assert res.returncode == 0 and res.stdout.startswith("ok: 3 shard(s), 60 patients"), res.stderr
    res = run_slimp("ingest", "synth", synth_dir, tmp_path / "out", "--image-size", "16",
                    "--workers", "1", "--check")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "check: every shard's counts and sha256 match manifest.json" in res.stdout


def _images(data) -> int:
    return json.loads((data / "manifest.json").read_text())["counts"]["images"]
