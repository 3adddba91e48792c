"""Schemas refuse leaks and contradictions; resolved schemas refuse what encoders cannot read
(issue 13, part 4)."""

from __future__ import annotations

import copy
import json

import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import (
    ResolvedSchema,
    builtin_schema_names,
    load_dataset_schema,
    validate_dataset_schema,
)

BASE = {
    "name": "t",
    "patient_id": "pid",
    "lesion_id": "lid",
    "image": "img",
    "extra_images": ["img2"],
    "label": "dx",
    "malignant": ["mel"],
    "patient_features": [{"name": "age", "type": "numerical", "min": 0, "max": 120}],
    "lesion_features": [{"name": "site", "type": "categorical"}],
    "excluded": [{"name": "biopsed", "reason": "label leak"}],
}


def _with(level: str, feature: dict) -> dict:
    schema = copy.deepcopy(BASE)
    schema[level].append(feature)
    return schema


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            _with("patient_features", {"name": "dx", "type": "categorical"}),
            r"feature 'dx' \(patient_features\) is the label column: it would leak",
        ),
        (
            _with("lesion_features", {"name": "pid", "type": "categorical"}),
            r"feature 'pid' \(lesion_features\) is the patient id column",
        ),
        (
            _with("lesion_features", {"name": "lid", "type": "categorical"}),
            r"feature 'lid' \(lesion_features\) is the lesion id column",
        ),
        (
            _with("lesion_features", {"name": "img", "type": "categorical"}),
            r"feature 'img' \(lesion_features\) is the image column",
        ),
        (
            _with("lesion_features", {"name": "img2", "type": "categorical"}),
            r"feature 'img2' \(lesion_features\) is an extra_images column",
        ),
        (
            _with("lesion_features", {"name": "site", "type": "categorical"}),
            r"feature 'site' is listed twice in lesion_features",
        ),
        (
            _with("lesion_features", {"name": "age", "type": "numerical"}),
            r"feature 'age' is listed on both levels \(patient_features and lesion_features\)",
        ),
        (
            _with("lesion_features", {"name": "biopsed", "type": "boolean"}),
            r"feature 'biopsed' \(lesion_features\) is also listed in excluded",
        ),
        (
            _with("lesion_features", {"name": "sex", "type": "categorical", "min": 0}),
            r"feature 'sex' is categorical: min/max apply to numerical features only",
        ),
        (
            _with("lesion_features", {"name": "d", "type": "numerical", "min": 5, "max": 1}),
            r"feature 'd' has min 5 > max 1",
        ),
        (
            _with("lesion_features", {"name": "d", "type": "numerical", "max": float("nan")}),
            r"feature 'd' has a non-finite max",
        ),
    ],
)
def test_leaks_and_contradictions_are_refused(schema, message):
    with pytest.raises(SlimpError, match=rf"^my.json: {message}"):
        validate_dataset_schema(schema, source="my.json")


def test_the_base_and_every_builtin_schema_pass():
    validate_dataset_schema(copy.deepcopy(BASE), source="base")
    for name in builtin_schema_names():
        load_dataset_schema(name)
    pad = load_dataset_schema("pad-ufes-20")
    bounds = {f["name"]: (f.get("min"), f.get("max")) for f in pad["patient_features"]}
    assert bounds["age"] == (0, 120)


def test_label_as_a_feature_is_one_line_from_the_cli(tmp_path, run_slimp):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "metadata.csv").write_text("pid,lid,img,dx,age,site\n")
    leak = _with("patient_features", {"name": "dx", "type": "categorical"})
    (tmp_path / "leak.json").write_text(json.dumps(leak))
    res = run_slimp("ingest", "csv", tmp_path / "src", tmp_path / "out", "--schema",
                    tmp_path / "leak.json")  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'leak.json'}: feature 'dx'")
    assert not (tmp_path / "out").exists()


def _resolved(**changes) -> dict:
    feature = {"name": "site", "type": "categorical", "missing_rate": 0.0, "vocab": ["arm"]}
    number = {"name": "age", "type": "numerical", "missing_rate": 0.0, "mean": 1.0, "std": 2.0}
    d = {"patient_features": [number], "lesion_features": [feature]}
    for key, value in changes.items():
        level, field = key.split("__")
        d[f"{level}_features"][0][field] = value
    return d


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lesion__vocab": None}, r"feature 'site' has vocab None, not a list of strings"),
        ({"lesion__vocab": [1, 2]}, r"feature 'site' has vocab \[1, 2\]"),
        ({"patient__mean": None}, r"feature 'age' has mean None, not a number"),
        ({"patient__std": float("inf")}, r"feature 'age' has an invalid std inf"),
        ({"patient__std": -1.0}, r"feature 'age' has an invalid std -1.0"),
        ({"lesion__type": "text"}, r"feature 'site' has type 'text'"),
    ],
)
def test_resolved_schema_refuses_what_encoders_cannot_read(changes, message):
    with pytest.raises(SlimpError, match=rf"^schema.json: \w+_features: {message}"):
        ResolvedSchema.from_dict(_resolved(**changes), source="schema.json")
    assert ResolvedSchema.from_dict(_resolved()).lesion_features[0]["vocab"] == ["arm"]
