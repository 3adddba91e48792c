"""The README's walkthrough runs as written (bash block), on the shared PAD subset, with the
image model, sizes and epochs made tiny; so does its Python snippet of step 7."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# What the test makes tiny: each must appear in the walkthrough (count), so the README cannot
# drift away from what is tested.
TINY = [
    ("--image-size 256", "--image-size 64", 1),
    (
        "--image-model vit_tiny_patch16_224 --input-size 224",
        "--image-model vit_test --input-size 32",
        1,
    ),
    ("--epochs 10", "--epochs 1 --max-steps 3", 1),
    ("--seeds 0,1,2", "--seeds 0", 1),
    ("--workers 2", "--workers 0", 2),
]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def walkthrough() -> tuple[str, str]:
    section = _section(README.read_text(), "## Walkthrough")
    (bash,) = _blocks(section, "bash")
    (python,) = _blocks(section, "python")
    return bash, python


def test_walkthrough_names_every_step_it_needs():
    """Nothing is used before it is made: every folder read was written by an earlier step."""
    bash, _ = walkthrough()
    lines = [line for line in bash.splitlines() if line.startswith("slimp ")]
    assert [line.split()[1] for line in lines] == [
        "ingest",
        "pretrain",
        "embed",
        "probe",
        "retrieve",
        "export",
        "encode",
    ]
    for src, _, count in TINY:
        assert bash.count(src) == count, src


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(pad_source, tmp_path):
    bash, python = walkthrough()
    for src, dst, _ in TINY:
        bash = bash.replace(src, dst)
    env = {
        **os.environ,
        "PAD": str(pad_source),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", bash],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr

    probe = json.loads((tmp_path / "results" / "pad-probe.json").read_text())
    assert {r["split"] for r in probe["results"]} == {"holdout"}
    assert probe["split"]["test_rows_seen_in_pretraining"] == 0
    assert {"linear", "knn", "baseline-logreg"} <= {r["method"] for r in probe["results"]}
    assert (tmp_path / "results" / "pad-retrieval.json").is_file()
    assert (tmp_path / "models" / "pad" / "model.safetensors").is_file()
    card = (tmp_path / "models" / "pad" / "README.md").read_text()
    assert "| linear | holdout |" in card
    lesion = json.loads((tmp_path / "results" / "lesion.json").read_text())
    assert lesion["levels"] == ["image", "lesion", "patient"]
    assert lesion["missing"] and "age" not in lesion["missing"]

    res = subprocess.run(
        [sys.executable, "-c", python],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    # vit_test is 64 wide, and the shared dimension defaults to the ViT's width
    assert res.stdout.startswith("{'image': 64, 'lesion': 64, 'patient': 64} missing: [")
    assert "'diameter_1'" in res.stdout and "'age'" not in res.stdout
