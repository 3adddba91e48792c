"""Fuzz (hypothesis): generated CSV cells, schema documents and option values never make
ingest or probe escape with anything but a one-line user error (issue 13, part 6).

ingest is called as a library (SlimpError is the only exception allowed); probe through the
real entry point in-process (`run_cli`: exit 0, 1 or 2, never a traceback). Small example
counts keep the module well under a minute.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from slimp_cli.core.errors import SlimpError
from slimp_cli.ingest import ingest

COLUMNS = ["pid", "lid", "img", "dx", "age", "sex", "diam", "site"]
SPECIAL_CELLS = [
    "", " ", "NA", "nan", "inf", "-inf", "1e999", "-1e999", "1e100", "1e200", "-5", "400",
    "0", "3,5", "1.5e3", "True", "no", "?", "mel", "nev", "\ufffd", "é", "x" * 300,
    "a.png", "b.png", "../outside.png", "\t", "1e-400", "0x1F", "١٢", "NaN", "-0",
]  # fmt: skip
IMAGE_CELLS = ["a.png", "b.png", "c.png", "A.PNG", "images/b.png", "missing.png",
               "../outside.png", "", "broken.png", "sixteen.png", "a"]  # fmt: skip
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def source_root(tmp_path_factory) -> Path:
    """Images every generated table may name (valid, broken, 16-bit, outside SOURCE)."""
    root = tmp_path_factory.mktemp("fuzz")
    images = root / "template" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        (images / name).write_bytes(_png(Image.fromarray(pixels)))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    ramp = np.tile(np.linspace(0, 65535, 12), (12, 1)).astype(np.uint16)
    (images / "sixteen.png").write_bytes(_png(Image.fromarray(ramp)))
    (root / "outside.png").write_bytes((images / "a.png").read_bytes())
    return root


def base_schema() -> dict:
    return {
        "name": "fuzz",
        "patient_id": "pid",
        "lesion_id": "lid",
        "image": "img",
        "label": "dx",
        "malignant": ["mel"],
        "patient_features": [
            {"name": "age", "type": "numerical", "min": 0, "max": 120},
            {"name": "sex", "type": "categorical"},
        ],
        "lesion_features": [
            {"name": "diam", "type": "numerical"},
            {"name": "site", "type": "categorical"},
        ],
        "excluded": [],
    }


any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
names = st.sampled_from([*COLUMNS, "other", ""]) | st.text(max_size=6)
feature = st.fixed_dictionaries(
    {"name": names, "type": st.sampled_from(["numerical", "categorical", "boolean", "text"])},
    optional={
        "min": st.floats() | st.integers(-10, 10),
        "max": st.floats() | st.integers(-10, 200),
        "optional": st.booleans(),
    },
)
ROLE_KEYS = ["patient_id", "lesion_id", "image", "label", "name"]
LIST_KEYS = ["patient_features", "lesion_features", "excluded", "malignant"]


@st.composite
def schemas(draw) -> dict:
    """A valid schema with a few random edits: roles renamed or dropped, features added
    (leaks, duplicates, bad bounds), lists replaced by anything JSON."""
    schema = copy.deepcopy(base_schema())
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):  # often valid: go deep
        edit = draw(st.sampled_from(["role", "drop", "feature", "junk", "label_map"]))
        if edit == "role":
            schema[draw(st.sampled_from(ROLE_KEYS))] = draw(st.none() | names)
        elif edit == "drop":
            schema.pop(draw(st.sampled_from(ROLE_KEYS + LIST_KEYS)), None)
        elif edit == "feature":
            level = draw(st.sampled_from(["patient_features", "lesion_features"]))
            schema.setdefault(level, [])
            if isinstance(schema[level], list):
                schema[level].append(draw(feature))
        elif edit == "junk":
            schema[draw(st.sampled_from(LIST_KEYS + ["extra_images", "benign"]))] = draw(any_json)
        else:
            schema["label_map"] = draw(st.dictionaries(names, names | any_json, max_size=3))
    return schema


cells = st.sampled_from(SPECIAL_CELLS) | st.text(max_size=8)
rows = st.lists(
    st.fixed_dictionaries(
        {c: (st.sampled_from(IMAGE_CELLS) if c == "img" else cells) for c in COLUMNS}
    ),
    min_size=1,
    max_size=6,
)


def _write_table(path: Path, columns: list[str], table: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for r in table:
        writer.writerow([r[c] for c in columns])
    path.write_text(text.getvalue(), encoding="utf-8")


@FUZZ
@given(
    table=rows,
    dropped=st.sampled_from([(), (), (), (), ("age",), ("img",), ("pid", "dx")]),
    schema=schemas(),
    image_size=st.just(16) | st.just(24) | st.sampled_from([8, -3, 4097, 100_000]),
    strict=st.booleans(),
    allow_outside=st.booleans(),
)
def test_ingest_never_escapes_with_a_traceback(
    source_root, table, dropped, schema, image_size, strict, allow_outside
):
    work = Path(tempfile.mkdtemp(dir=source_root))
    src = work / "src"
    src.mkdir()
    (src / "images").symlink_to(source_root / "template" / "images")
    columns = [c for c in COLUMNS if c not in dropped]
    _write_table(src / "metadata.csv", columns, table)
    try:
        result = ingest(
            "csv",
            src,
            work / "out",
            schema=schema,
            image_size=image_size,
            strict=strict,
            allow_outside=allow_outside,
            workers=1,
        )
    except SlimpError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
        return
    # a finished ingest is complete and finite
    manifest = result.manifest
    assert manifest["complete"] is True and manifest["counts"]["patients"] >= 1
    for level in ("patient_features", "lesion_features"):
        for f in result.schema[level]:
            if f["type"] == "numerical":
                assert math.isfinite(f["mean"]) and math.isfinite(f["std"])
            else:
                assert "\ufffd" not in "".join(f["vocab"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from conftest import _write_store

    rng = np.random.default_rng(0)
    n = 40
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    return _write_store(
        tmp_path_factory.mktemp("fuzz_store") / "s.h5",
        features={"image": feats, "lesion": feats[:, ::-1].copy(), "patient": feats * 2},
        patient_id=np.arange(n) // 2,
        label=np.arange(n) % 3,
    )


def numbers(kind=float, valid=None):
    """Option text: often a sensible value (so probe runs), else anything."""
    wild = st.floats() if kind is float else st.integers(-(2**70), 2**70)
    junk = st.sampled_from(["nan", "inf", "-1", "0", "1e400", "abc", ""])
    return valid.map(str) | valid.map(str) | wild.map(str) | junk


def comma_lists(item, min_size=0):
    return st.lists(item, min_size=min_size, max_size=3).map(",".join)


@FUZZ
@given(
    seeds=comma_lists(
        st.integers(0, 3).map(str) | st.integers(-3, 2**33).map(str) | st.just("x"), min_size=1
    ),
    c=numbers(valid=st.floats(1e-3, 1e3)),
    temperature=numbers(valid=st.floats(1e-3, 10)),
    k=numbers(int, valid=st.integers(1, 60)),
    split=st.sampled_from(["random", "patient", "holdout", "bogus"]),
    label=st.sampled_from(["binary", "multiclass", "bogus"]),
    features=comma_lists(st.sampled_from(["image", "lesion", "patient", "image", "bogus"])),
    method=comma_lists(st.sampled_from(["linear", "knn", "linear", "knn", "x"]), min_size=1),
    low_shot=comma_lists(st.sampled_from(["0.5", "0", "1", "1e-300", "2", "-0.1", "nan"])),
)
def test_probe_options_never_escape_with_a_traceback(
    store, run_cli, seeds, c, temperature, k, split, label, features, method, low_shot
):
    args = ["probe", store, "--seeds", seeds, "--C", c, "--knn-temperature", temperature,
            "--k", k, "--split", split, "--label", label, "--method", method, "--device", "cpu"]  # fmt: skip
    if features:
        args += ["--features", features]
    if low_shot:
        args += ["--low-shot", low_shot]
    res = run_cli(*args)
    assert res.exit_code in (0, 1, 2), res.output
    assert "Traceback" not in res.output
    if res.exit_code == 1:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, res.stderr
