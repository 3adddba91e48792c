"""Resolved schema and tabular encoding: known answers on hand-made records."""

import json

import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import (
    ResolvedSchema,
    cardinalities,
    category_key,
    encode_tabular,
    encoding_order,
    n_numerical,
)

FEATURES = [
    {"name": "age", "type": "numerical", "mean": 50.0, "std": 10.0, "missing_rate": 0.0},
    {"name": "sex", "type": "categorical", "vocab": ["female", "male"], "missing_rate": 0.1},
    {"name": "smoke", "type": "boolean", "vocab": ["false", "true"], "missing_rate": 0.2},
    {"name": "diam", "type": "numerical", "mean": 2.0, "std": 0.0, "missing_rate": 0.5},
]


def test_encoding_order_puts_categoricals_first():
    names = [f["name"] for f in encoding_order(FEATURES)]
    assert names == ["sex", "smoke", "age", "diam"]
    assert cardinalities(FEATURES) == [2, 2]
    assert n_numerical(FEATURES) == 2


def test_encode_known_values():
    records = [
        {"age": 60.0, "sex": "male", "smoke": True, "diam": 3.0},
        {"age": None, "sex": None, "smoke": False},  # diam absent = missing
        {"age": 40, "sex": "other", "smoke": None, "diam": float("nan")},  # unknown category
    ]
    tab = encode_tabular(FEATURES, records)
    assert tab.categorical.tolist() == [[2, 2], [0, 1], [0, 0]]
    assert tab.numerical_mask.tolist() == [[True, True], [False, False], [True, False]]
    # age standardised with mean 50 / std 10; diam std 0 is clamped to 1e-6
    assert tab.numerical[0, 0].item() == pytest.approx(1.0)
    assert tab.numerical[2, 0].item() == pytest.approx(-1.0)
    assert tab.numerical[0, 1].item() == pytest.approx(1.0 / 1e-6, rel=1e-4)
    assert tab.numerical[1].abs().sum().item() == 0.0  # missing -> 0
    assert len(tab) == 3


def test_category_key_normalises_raw_values():
    assert category_key(True) == "true"
    assert category_key(2.0) == "2"
    assert category_key(2.5) == "2.5"
    assert category_key(float("nan")) is None
    assert category_key("FACE") == "FACE"


def test_resolved_schema_roles_and_fingerprint(tmp_path):
    d = {
        "name": "toy",
        "patient_features": FEATURES[:2],
        "lesion_features": FEATURES[2:],
        "derived_patient_features": [
            {"name": "n_lesions", "type": "numerical", "mean": 2, "std": 1, "missing_rate": 0}
        ],
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(d))
    s = ResolvedSchema.load(path)
    assert s.has_patient_features
    assert [f["name"] for f in s.patient_all] == ["age", "sex", "n_lesions"]
    assert [f["name"] for f in s.flat_features] == ["age", "sex", "n_lesions", "smoke", "diam"]
    other = ResolvedSchema.from_dict(json.loads(json.dumps(d)))
    assert s.fingerprint() == other.fingerprint()
    other.data["patient_features"][1]["vocab"] = ["female", "male", "other"]
    assert s.fingerprint() != other.fingerprint()


def test_missing_schema_file_is_a_user_error(tmp_path):
    with pytest.raises(SlimpError, match="schema.json not found"):
        ResolvedSchema.load(tmp_path / "schema.json")


def test_encode_raw_one_hot_and_missing_indicators():
    from slimp_cli.data.schema import encode_raw, raw_columns

    cols, sources = raw_columns(FEATURES)
    assert cols == [
        "age",
        "age=missing",
        "sex=female",
        "sex=male",
        "sex=missing",
        "smoke=false",
        "smoke=true",
        "smoke=missing",
        "diam",
        "diam=missing",
    ]
    assert sources == ["age"] * 2 + ["sex"] * 3 + ["smoke"] * 3 + ["diam"] * 2
    m = encode_raw(
        FEATURES,
        [
            {"age": 70, "sex": "female", "smoke": True, "diam": None},
            {"age": None, "sex": "other", "smoke": None, "diam": 2.0},
        ],
    )
    assert m.tolist() == [
        [2.0, 0, 1, 0, 0, 0, 1, 0, 0, 1],
        [0, 1, 0, 0, 0, 0, 0, 1, 0, 0],
    ]


def test_invalid_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text('{"patient_features": [],\n  "lesion_features": [,]}')
    with pytest.raises(SlimpError, match=r"schema.json: not valid JSON .* at line 2"):
        ResolvedSchema.load(path)


def test_pooled_moments_equal_the_two_pass_statistics():
    from slimp_cli.data.schema import numeric_stats, pooled_stats, value_moments

    groups = [[2.0, 4.0, 4.0], [4.0], [5.0, 5.0, 7.0, 9.0]]  # mean 5, population std 2 exactly
    parts = [value_moments(g) for g in groups]
    assert parts[1] == [1, 4.0, 0.0]
    assert pooled_stats(parts) == (5.0, 2.0)
    rng = __import__("numpy").random.default_rng(0)
    values = (rng.normal(1500.0, 0.5, size=300)).tolist()  # large mean, small spread
    split = [values[:7], values[7:150], values[150:]]
    mean, std = pooled_stats([value_moments(g) for g in split])
    want = numeric_stats(values)
    assert abs(mean - want[0]) < 1e-9 and abs(std - want[1]) / want[1] < 1e-9
    assert pooled_stats([]) == (0.0, 1.0) == numeric_stats([])
    assert value_moments([None, "x", True]) is None  # no numbers: no moments
