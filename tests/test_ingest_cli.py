"""The ingest-side CLI: synth -> ingest synth, schema infer, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys


def slimp(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimp_cli.cli", *map(str, args)], capture_output=True, text=True
    )


def test_synth_then_ingest_synth(tmp_path):
    made = slimp(
        "synth", tmp_path / "cohort", "--patients", "8", "--seed", "2", "--image-size", "24"
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "cohort" / "metadata.csv").is_file() and (
        tmp_path / "cohort" / "schema.json"
    ).is_file()
    done = slimp(
        "ingest",
        "synth",
        tmp_path / "cohort",
        tmp_path / "shards",
        "--image-size",
        "24",
        "--workers",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert "8 patients" in done.stdout
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["counts"]["patients"] == 8
    again = slimp("ingest", "synth", tmp_path / "cohort", tmp_path / "shards")
    assert again.returncode == 1
    assert (
        again.stderr.startswith("error: ")
        and "--overwrite" in again.stderr
        and "Traceback" not in again.stderr
    )
    same_as_csv = slimp(
        "ingest",
        "csv",
        tmp_path / "cohort",
        tmp_path / "csv",
        "--image-size",
        "24",
        "--schema",
        tmp_path / "cohort" / "schema.json",
    )
    assert same_as_csv.returncode == 0, same_as_csv.stderr
    assert (tmp_path / "csv" / "shard-000000.tar").read_bytes() == (
        tmp_path / "shards" / "shard-000000.tar"
    ).read_bytes()


def test_schema_infer_to_stdout_and_file(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(
        "patient_id,image,diagnosis,age,site\np1,a.jpg,melanoma,50,arm\np1,b.jpg,nevus,50,leg\n"
        "p2,c.jpg,nevus,31,arm\n"
    )
    shown = slimp("schema", "infer", table)
    assert shown.returncode == 0, shown.stderr
    draft = json.loads(shown.stdout)
    assert (
        draft["patient_id"] == "patient_id"
        and draft["image"] == "image"
        and draft["malignant"] == ["melanoma"]
    )
    assert "_todo" in draft
    written = slimp("schema", "infer", table, "--out", tmp_path / "draft.json")
    assert written.returncode == 0 and json.loads((tmp_path / "draft.json").read_text()) == draft


def test_errors_are_one_line(tmp_path):
    unknown = slimp("ingest", "nope", tmp_path, tmp_path / "o")
    assert unknown.returncode == 1 and unknown.stderr.strip().count("\n") == 0
    assert "unknown format 'nope'" in unknown.stderr
    missing = slimp("ingest", "pad-ufes-20", tmp_path / "absent", tmp_path / "o")
    assert missing.returncode == 1 and "no such file" in missing.stderr
