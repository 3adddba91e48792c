"""Dataset schemas: load and validate them, and encode raw metadata into tensors.

A *dataset schema* (`slimp_cli/schemas/<name>.json`) names roles (patient id, lesion id, image, label)
and features. A *resolved schema* (`schema.json` beside the shards, written by ingest) adds
what was learned from the data: vocabularies, numeric mean/std and missing rates. Encoders are
built from, and inputs encoded with, the resolved schema only, so a model and its data agree.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core.errors import SlimpError
from ..core.paths import builtin_schemas, read_json

if TYPE_CHECKING:  # torch is imported where tensors are made: ingest never loads it (~0.5 GB)
    import torch

FEATURE_TYPES = ("numerical", "categorical", "boolean")


def builtin_schema_names() -> list[str]:
    """Names of the schemas shipped with the package (the meta-schema excluded)."""
    return sorted(
        p.name.removesuffix(".json")
        for p in builtin_schemas().iterdir()
        if p.name.endswith(".json") and p.name != META_SCHEMA
    )


META_SCHEMA = "dataset.schema.json"


def load_dataset_schema(path_or_name: str | Path) -> dict:
    """Load a dataset schema by built-in name (e.g. 'pad-ufes-20') or JSON path, validated."""
    path = Path(path_or_name)
    if path.is_file():
        schema, source = read_json(path), str(path)
    elif not path.suffix and path_or_name in builtin_schema_names():
        resource = builtin_schemas().joinpath(f"{path_or_name}.json")
        schema, source = json.loads(resource.read_text()), f"built-in schema {path_or_name}"
    else:
        raise SlimpError(
            f"schema '{path_or_name}' not found; give a JSON file or one of: "
            + ", ".join(builtin_schema_names())
        )
    validate_dataset_schema(schema, source=source)
    return schema


def validate_dataset_schema(schema: dict, *, source: str = "schema") -> None:
    """Check a dataset schema against the meta-schema `dataset.schema.json` (JSON Schema)."""
    import jsonschema

    meta = json.loads(builtin_schemas().joinpath(META_SCHEMA).read_text())
    try:
        jsonschema.validate(schema, meta)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise SlimpError(f"{source}: invalid schema at {where}: {exc.message}") from None
    check_schema_consistency(schema, source=source)


# What a feature must never be: the label (the model would learn the answer), an identifier
# (memorised, not learned) or the image reference.
_ROLES = {
    "label": "the label column: it would leak the diagnosis into training",
    "patient_id": "the patient id column (an identifier, not a feature)",
    "lesion_id": "the lesion id column (an identifier, not a feature)",
    "image": "the image column (a file reference, not a feature)",
}


def check_schema_consistency(schema: dict, *, source: str = "schema") -> None:
    """What JSON Schema cannot say: no feature is a role column (label, ids, image) or
    excluded; no feature is named twice or on both levels; `min`/`max` only on numerical
    features, with min <= max. SlimpError naming the feature."""
    level_of: dict[str, str] = {}
    for level in ("patient_features", "lesion_features"):
        for feature in schema.get(level) or []:
            name = feature["name"]
            if name in level_of:
                where = f"twice in {level}" if level_of[name] == level else "on both levels"
                raise SlimpError(
                    f"{source}: feature '{name}' is listed {where} "
                    f"({level_of[name]} and {level}); list it once"
                )
            level_of[name] = level
            _check_bounds(feature, source)
    for role, why in _ROLES.items():
        column = schema.get(role)
        if column is not None and column in level_of:
            raise SlimpError(
                f"{source}: feature '{column}' ({level_of[column]}) is {why}; remove it from "
                f"{level_of[column]}"
            )
    for column in schema.get("extra_images") or []:
        if column in level_of:
            raise SlimpError(
                f"{source}: feature '{column}' ({level_of[column]}) is an extra_images column "
                "(a file reference, not a feature)"
            )
    for item in schema.get("excluded") or []:
        if item["name"] in level_of:
            raise SlimpError(
                f"{source}: feature '{item['name']}' ({level_of[item['name']]}) is also listed "
                "in excluded; keep it in one place"
            )


def _check_bounds(feature: dict, source: str) -> None:
    lo, hi = feature.get("min"), feature.get("max")
    if lo is None and hi is None:
        return
    if feature["type"] != "numerical":
        raise SlimpError(
            f"{source}: feature '{feature['name']}' is {feature['type']}: min/max apply to "
            "numerical features only"
        )
    for key, bound in (("min", lo), ("max", hi)):
        if bound is not None and not math.isfinite(bound):
            raise SlimpError(f"{source}: feature '{feature['name']}' has a non-finite {key}")
    if lo is not None and hi is not None and lo > hi:
        raise SlimpError(f"{source}: feature '{feature['name']}' has min {lo} > max {hi}")


def is_categorical(feature: dict) -> bool:
    """Booleans are encoded as two-value categoricals (index 0 stays 'missing')."""
    return feature["type"] in ("categorical", "boolean")


def encoding_order(features: Sequence[dict]) -> list[dict]:
    """Categorical/boolean features first (schema order), then numerical (schema order)."""
    return [f for f in features if is_categorical(f)] + [
        f for f in features if f["type"] == "numerical"
    ]


def cardinalities(features: Sequence[dict]) -> list[int]:
    """Vocabulary size of each categorical/boolean feature, in encoding order."""
    return [len(f["vocab"]) for f in features if is_categorical(f)]


def n_numerical(features: Sequence[dict]) -> int:
    return sum(1 for f in features if f["type"] == "numerical")


class TabularBatch(NamedTuple):
    """Encoded metadata of n rows.

    Shape:
        categorical: [n, n_cat] long; 0 = missing or unknown, k = vocab[k - 1]
        numerical: [n, n_num] float; standardised, 0 where missing
        numerical_mask: [n, n_num] bool; True where the value is present
    """

    categorical: torch.Tensor
    numerical: torch.Tensor
    numerical_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TabularBatch:
        return TabularBatch(*(t.to(device, non_blocking=True) for t in self))

    def __len__(self) -> int:  # rows, not fields
        return self.categorical.shape[0]


def category_key(value: Any) -> str | None:
    """The vocabulary key of a raw value: booleans -> 'true'/'false', numbers like 2.0 -> '2'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or math.isinf(out) else out


def encode_tabular(features: Sequence[dict], records: Sequence[dict]) -> TabularBatch:
    """Encode raw records (feature name -> raw value, None = missing) with resolved features.

    Unknown categories map to 0 (missing): a model meets them at embed time on new data.
    """
    ordered = encoding_order(features)
    cats = [f for f in ordered if is_categorical(f)]
    nums = [f for f in ordered if f["type"] == "numerical"]
    lookups = [{v: i + 1 for i, v in enumerate(f["vocab"])} for f in cats]
    n = len(records)
    import torch

    # built as Python lists, one tensor each at the end: element-wise tensor writes cost
    # microseconds apiece, and training encodes every drawn lesion's record
    cat_rows, num_rows, mask_rows = [], [], []
    for rec in records:
        row = []
        for f, lookup in zip(cats, lookups):
            key = category_key(rec.get(f["name"]))
            row.append(lookup.get(key, 0) if key is not None else 0)
        cat_rows.append(row)
        values, present = [], []
        for f in nums:
            x = _as_float(rec.get(f["name"]))
            values.append(0.0 if x is None else (x - f["mean"]) / max(f["std"], 1e-6))
            present.append(x is not None)
        num_rows.append(values)
        mask_rows.append(present)
    cat = torch.tensor(cat_rows, dtype=torch.long).reshape(n, len(cats))
    num = torch.tensor(num_rows, dtype=torch.float32).reshape(n, len(nums))
    mask = torch.tensor(mask_rows, dtype=torch.bool).reshape(n, len(nums))
    return TabularBatch(cat, num, mask)


# Levels whose numerical features are standardised, and where a patient's values come from.
STAT_LEVELS = ("patient_features", "derived_patient_features", "lesion_features")


def value_moments(values) -> list[float] | None:
    """[n, mean, sum of squared deviations] of the numbers among `values` (None: none)."""
    xs = [x for x in map(_as_float, values) if x is not None]
    if not xs:
        return None
    try:
        mean = math.fsum(xs) / len(xs)
        m2 = math.fsum((x - mean) ** 2 for x in xs)
    except OverflowError:
        mean = m2 = math.inf
    return [len(xs), mean, m2]


def patient_moments(
    levels: dict[str, Sequence[dict]], fields: dict, derived: dict, lesions: Sequence[dict]
) -> dict:
    """One patient's moments per level and numerical feature ({level: {name: [n, mean, m2]}}):
    its own fields, its derived fields, its lesion entries' fields (`levels` names the
    features of each level of STAT_LEVELS)."""
    sources = {
        "patient_features": [fields],
        "derived_patient_features": [derived],
        "lesion_features": lesions,
    }
    out = {}
    for level, features in levels.items():
        got = {}
        for f in features:
            if f["type"] == "numerical":
                m = value_moments(r.get(f["name"]) for r in sources[level])
                if m is not None:
                    got[f["name"]] = m
        if got:
            out[level] = got
    return out


def pooled_stats(parts: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(mean, population std floored at 1e-6) of the union of groups given as [n, mean, m2];
    (0, 1) when empty, like `numeric_stats`."""
    n = sum(p[0] for p in parts)
    if not n:
        return 0.0, 1.0
    try:
        mean = math.fsum(p[0] * p[1] for p in parts) / n
        m2 = math.fsum(p[2] for p in parts) + math.fsum(p[0] * (p[1] - mean) ** 2 for p in parts)
    except OverflowError:
        return math.inf, math.inf
    return mean, max(math.sqrt(max(m2, 0.0) / n), 1e-6)


def numeric_stats(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std floored at 1e-6) used to standardise a numerical feature; (0, 1)
    when there is no value. Exact sums (math.fsum: the same result whatever the row order);
    when squares or sums would overflow (values near 1e200), the same on values scaled by
    their largest magnitude, so it never overflows."""
    nums = [float(v) for v in values]
    if not nums:
        return 0.0, 1.0
    n = len(nums)
    try:
        mean = math.fsum(nums) / n
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in nums) / n)
    except OverflowError:
        mean = std = math.inf
    if not (math.isfinite(mean) and math.isfinite(std)):
        scale = max(abs(x) for x in nums)
        scaled = [x / scale for x in nums]
        m = math.fsum(scaled) / n
        mean = m * scale
        std = math.sqrt(math.fsum((x - m) ** 2 for x in scaled) / n) * scale
    return mean, max(std, 1e-6)


@dataclass
class ResolvedSchema:
    """The resolved schema of an ingested dataset (`schema.json`); see docs/internals.md."""

    data: dict

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "resolved schema") -> ResolvedSchema:
        if not isinstance(d, dict):
            raise SlimpError(f"{source}: not a resolved schema (a JSON object from slimp ingest)")
        for key in ("patient_features", "lesion_features"):
            if key not in d:
                raise SlimpError(f"{source} lacks '{key}' (was it written by slimp ingest?)")
        d.setdefault("derived_patient_features", [])
        for key in ("patient_features", "lesion_features", "derived_patient_features"):
            if not isinstance(d[key], list):
                raise SlimpError(f"{source}: '{key}' is not a list; re-run slimp ingest")
            for feature in d[key]:
                _check_resolved_feature(feature, f"{source}: {key}")
        return cls(data=d)

    @classmethod
    def load(cls, path: str | Path) -> ResolvedSchema:
        path = Path(path)
        if not path.is_file():
            raise SlimpError(f"{path}: schema.json not found (run slimp ingest first)")
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self) -> dict:
        return self.data

    @property
    def name(self) -> str:
        return self.data.get("name", "dataset")

    @property
    def patient_features(self) -> list[dict]:
        return self.data["patient_features"]

    @property
    def lesion_features(self) -> list[dict]:
        return self.data["lesion_features"]

    @property
    def derived_patient_features(self) -> list[dict]:
        return self.data.get("derived_patient_features", [])

    @property
    def patient_all(self) -> list[dict]:
        """Patient features the outer encoder sees: raw ones plus derived (n_lesions)."""
        return self.patient_features + self.derived_patient_features

    @property
    def has_patient_features(self) -> bool:
        """True when the data has real patient-level metadata (derived counts alone do not count)."""
        return len(self.patient_features) > 0

    @property
    def flat_features(self) -> list[dict]:
        """Features of the flat variant's single encoder: patient (if any) then lesion."""
        return (self.patient_all if self.has_patient_features else []) + self.lesion_features

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes", []))

    @property
    def malignant(self) -> list[str]:
        return list(self.data.get("malignant", []))

    def with_statistics(
        self, patient_records: Sequence[dict], lesion_records: Sequence[dict]
    ) -> ResolvedSchema:
        """A copy whose numerical features are standardised with statistics of these records
        only (one record per patient: fields + derived; one per lesion image): the training
        patients, so held-out patients never shape the encoders' inputs."""
        data = json.loads(json.dumps(self.data))
        levels = {
            "patient_features": patient_records,
            "derived_patient_features": patient_records,
            "lesion_features": lesion_records,
        }
        for level, records in levels.items():
            for f in data.get(level, []):
                if f["type"] == "numerical":
                    values = [_as_float(r.get(f["name"])) for r in records]
                    f["mean"], f["std"] = numeric_stats([v for v in values if v is not None])
        data["statistics_from"] = "training patients"
        return ResolvedSchema.from_dict(data)

    def with_moments(self, parts: Sequence[dict]) -> ResolvedSchema:
        """A copy standardised with statistics pooled from per-patient moments (index.json's
        `moments`, see `patient_moments`): `with_statistics` of the same patients to float
        rounding (Chan et al.'s pairwise combination), without reading their records."""
        data = json.loads(json.dumps(self.data))
        for level in STAT_LEVELS:
            for f in data.get(level, []):
                if f["type"] != "numerical":
                    continue
                got = [p[level][f["name"]] for p in parts if f["name"] in p.get(level, {})]
                mean, std = pooled_stats(got)
                if math.isfinite(mean) and math.isfinite(std):
                    f["mean"], f["std"] = mean, std
        data["statistics_from"] = "training patients"
        return ResolvedSchema.from_dict(data)

    def fingerprint(self) -> str:
        """sha256 over what an encoder depends on: names, types, vocabularies, statistics."""
        keys = ("name", "type", "vocab", "mean", "std")
        parts = {
            level: [{k: f.get(k) for k in keys} for f in getattr(self, level)]
            for level in ("patient_features", "derived_patient_features", "lesion_features")
        }
        blob = json.dumps(parts, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _check_resolved_feature(feature: Any, where: str) -> None:
    """What encoders rely on: a name, a type, a list of string categories or a finite
    mean and non-negative std. A hand-edited schema.json fails here, in one line, not in torch."""
    if not isinstance(feature, dict) or not isinstance(feature.get("name"), str):
        raise SlimpError(f"{where}: {feature!r} is not a feature (needs a name and a type)")
    name, kind = feature["name"], feature.get("type")
    if kind not in FEATURE_TYPES:
        raise SlimpError(f"{where}: feature '{name}' has type {kind!r}; use one of {FEATURE_TYPES}")
    if kind == "numerical":
        for key in ("mean", "std"):
            value = feature.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SlimpError(f"{where}: feature '{name}' has {key} {value!r}, not a number")
            if not math.isfinite(value) or (key == "std" and value < 0):
                raise SlimpError(f"{where}: feature '{name}' has an invalid {key} {value!r}")
    else:
        vocab = feature.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
            raise SlimpError(
                f"{where}: feature '{name}' has vocab {vocab!r}, not a list of strings; "
                "re-run slimp ingest"
            )


def raw_columns(features: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Column names of `encode_raw` and the source field of each (for the leakage audit)."""
    columns: list[str] = []
    sources: list[str] = []
    for f in features:
        name = f["name"]
        if f["type"] == "numerical":
            cols = [name, f"{name}=missing"]
        else:
            cols = [f"{name}={v}" for v in f["vocab"]] + [f"{name}=missing"]
        columns += cols
        sources += [name] * len(cols)
    return columns, sources


def encode_raw(features: Sequence[dict], records: Sequence[dict]):
    """Encode raw metadata for metadata-only baselines, in schema order.

    Numerical: standardised value (0 where missing) + a missing indicator; categorical and
    boolean: one-hot over the vocabulary + a missing column (an unknown category is all zeros).

    Shape: returns a float32 numpy array [n, len(raw_columns(features)[0])].
    """
    import numpy as np

    columns, _ = raw_columns(features)
    out = np.zeros((len(records), len(columns)), dtype=np.float32)
    for r, rec in enumerate(records):
        c = 0
        for f in features:
            value = rec.get(f["name"])
            if f["type"] == "numerical":
                x = _as_float(value)
                if x is None:
                    out[r, c + 1] = 1.0
                else:
                    out[r, c] = (x - f["mean"]) / max(f["std"], 1e-6)
                c += 2
            else:
                vocab = f["vocab"]
                key = category_key(value)
                if key is None:
                    out[r, c + len(vocab)] = 1.0
                elif key in vocab:
                    out[r, c + vocab.index(key)] = 1.0
                c += len(vocab) + 1
    return out
