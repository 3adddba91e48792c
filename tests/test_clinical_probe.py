"""`probe`'s clinical evaluation end to end: the report's fields, subgroups decoded from the raw
metadata, the paired comparison, "what the images add", and bad input through `slimp`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import encode_raw, raw_columns
from slimp_cli.eval import WarningLog
from slimp_cli.eval.bootstrap import PatientBootstrap
from slimp_cli.eval.clinical import MalignantTask
from slimp_cli.eval.confidence import ClinicalContext, Prediction
from slimp_cli.eval.images_add import what_images_add
from slimp_cli.eval.probe import run_probe
from slimp_cli.eval.subgroups import RawColumns, subgroup_report
from slimp_cli.eval.weighted import TASK_METRICS
from slimp_cli.features.store import FeatureStore, FeatureStoreWriter

# the data's schema as a store records it (numerical statistics, vocabularies)
SCHEMA = {
    "name": "clinic",
    "patient_features": [
        {"name": "age", "type": "numerical", "mean": 52.0, "std": 14.0},
        {"name": "sex", "type": "categorical", "vocab": ["female", "male"]},
        {"name": "fitspatrick", "type": "numerical", "mean": 3.1, "std": 1.2},
    ],
    "lesion_features": [
        {"name": "region", "type": "categorical", "vocab": ["arm", "back", "face"]},
        {"name": "diameter", "type": "numerical", "mean": 8.0, "std": 3.0},
    ],
    "derived_patient_features": [],
}


def cohort(n_patients=160, seed=0):
    """Patients with 1-4 lesions; the label follows the image features, the metadata is noise."""
    rng = np.random.default_rng(seed)
    lesions = rng.integers(1, 5, n_patients)
    pid = np.repeat(np.arange(n_patients), lesions)
    n = len(pid)
    image = rng.normal(size=(n, 6)).astype(np.float32)
    label = (image[:, 0] + 0.5 * rng.normal(size=n) > 0.3).astype(np.int64)
    ages = rng.uniform(20, 85, n_patients).round()
    ages[1:3] = 40, 60  # the band edges (40 comes back from float32 as 39.9999999)
    patients = [
        {
            "age": None if p % 17 == 0 else float(ages[p]),
            "sex": ["female", "male", None, "other"][p % 4 if p % 9 == 0 else p % 2],
            "fitspatrick": float(1 + p % 4),
        }
        for p in range(n_patients)
    ]
    prow = [patients[p] for p in pid]
    lrow = [
        {"region": ["arm", "back", "face"][i % 3], "diameter": float(rng.uniform(2, 15))}
        for i in range(n)
    ]
    return dict(
        pid=pid,
        image=image,
        lesion=rng.normal(size=(n, 4)).astype(np.float32),
        label=label,
        prow=prow,
        lrow=lrow,
    )


def write_cohort(path: Path, c: dict, *, sides=None, label=None, malignant=None) -> Path:
    label = c["label"] if label is None else label
    malignant = label.astype(np.int8) if malignant is None else malignant
    raw = {
        "patient": encode_raw(SCHEMA["patient_features"], c["prow"]),
        "lesion": encode_raw(SCHEMA["lesion_features"], c["lrow"]),
    }
    classes = [f"c{i}" for i in range(int(label.max()) + 1)]
    with FeatureStoreWriter(
        path,
        n=len(label),
        dims={"image": 6, "lesion": 4},
        config={"model": "test"},
        schema=SCHEMA,
        classes=classes,
        raw_columns={
            "patient": raw_columns(SCHEMA["patient_features"]),
            "lesion": raw_columns(SCHEMA["lesion_features"]),
        },
    ) as w:
        w.append(
            lesion_id=[f"L{i}" for i in range(len(label))],
            patient_id=[f"P{p}" for p in c["pid"]],
            label=label,
            malignant=malignant,
            features={"image": c["image"], "lesion": c["lesion"]},
            raw=raw,
        )
        if sides is not None:
            w.set_split(sides, fingerprint="test", fraction=0.25)
    return path


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    c = cohort()
    return c, write_cohort(tmp_path_factory.mktemp("clinic") / "clinic.h5", c)


def expected_groups(c: dict, rows: np.ndarray) -> dict[str, list]:
    """Each column's group of each row, from the source values (not the encoding)."""

    def band(a):
        return "missing" if a is None else "<40" if a < 40 else "40-60" if a <= 60 else ">60"

    prow = [c["prow"][i] for i in rows]
    sex = {None: "missing", "other": "other"}
    return {
        "age": [band(r["age"]) for r in prow],
        "sex": [sex.get(r["sex"], r["sex"]) for r in prow],
        "fitspatrick": [f"{r['fitspatrick']:g}" for r in prow],
        "region": [c["lrow"][i]["region"] for i in rows],
    }


def test_subgroup_columns_decode_the_raw_metadata(clinic):
    c, path = clinic
    rows = np.arange(len(c["label"]))[::-1]  # every row, in another order
    with FeatureStore.open(path) as store:
        raw = RawColumns.of(store)
    for column, groups in expected_groups(c, rows).items():
        got, order = raw.labels(column, rows)
        assert got.tolist() == groups, column
        assert sorted(order) == sorted(set(groups))
    got, order = raw.labels("diameter", rows)  # many values: quartiles, a quarter each
    assert len(order) == 4 and all(0.2 < np.mean(got == g) < 0.3 for g in order)


def test_subgroup_metrics_are_those_of_the_group_rows():
    rng = np.random.default_rng(0)
    n = 300
    pid = np.arange(n) // 2
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 * y + rng.uniform(size=n) * 0.6, 0, 1)
    group = np.where(np.arange(n) % 3 == 0, "a", np.where(np.arange(n) % 3 == 1, "b", "c"))
    group[(y == 1) & (group == "c")] = "b"  # c: no malignant row at all
    test = np.arange(0, n, 2)
    ctx = ClinicalContext(
        y=y,
        patients=pid,
        task="binary",
        malignant=MalignantTask.binary(),
        boot=PatientBootstrap(patients=pid[test], n_resamples=200, seed=0),
        warnings=WarningLog(),
    )
    preds = [Prediction(0, test, np.column_stack([1 - p1[test], p1[test]]))]
    subgroups, gaps = subgroup_report(ctx, preds, {"g": (group, ["a", "b", "c"])})
    by = {s["group"]: s for s in subgroups}
    for g in ("a", "b"):
        rows = test[group[test] == g]
        assert by[g]["n"] == len(rows) and by[g]["n_positive"] == int(y[rows].sum())
        assert by[g]["auc"] == pytest.approx(roc_auc_score(y[rows], p1[rows]))
        pred = p1[rows] >= 0.5
        assert by[g]["sensitivity"] == pytest.approx(np.mean(pred[y[rows] == 1]))
        assert by[g]["specificity"] == pytest.approx(np.mean(~pred[y[rows] == 0]))
        low, high = by[g]["ci"]["auc"]
        assert low <= by[g]["auc"] <= high
    assert by["c"]["flagged"] and by["c"]["auc"] is None  # flagged, not dropped
    assert not by["a"]["flagged"] and not by["b"]["flagged"]
    (gap,) = [x for x in gaps if x["metric"] == "auc"]
    best, worst = sorted(("a", "b"), key=lambda g: -by[g]["auc"])
    assert (gap["best"], gap["worst"]) == (best, worst)
    assert gap["gap"] == pytest.approx(by[best]["auc"] - by[worst]["auc"])


def test_probe_report_carries_the_clinical_fields(clinic):
    c, path = clinic
    report = run_probe(path, seeds=[0], methods=["linear"], baseline=True, bootstrap=200)
    lin, logreg = report["results"][0], report["results"][1]
    assert set(TASK_METRICS) <= set(lin["metrics"])
    assert set(lin["ci"]) == set(lin["metrics"])
    for key in ("auc", "ap", "pauc_80", "balanced_accuracy"):
        low, high = lin["ci"][key]
        assert low <= lin["metrics"][key]["mean"] <= high, key
    assert 0 <= lin["metrics"]["pauc_80"]["mean"] <= 0.2
    # the counts are the test rows' (a lesion-grouped 10% split here)
    assert 0.07 * len(c["label"]) < lin["n"] < 0.13 * len(c["label"])
    assert 0 < lin["n_positive"] < lin["n"] and lin["n_patients"] <= lin["n"]
    assert [s["column"] for s in lin["subgroups"][:1]] == ["fitspatrick"]
    assert {s["column"] for s in lin["subgroups"]} == {"fitspatrick", "sex", "age", "region"}
    for s in lin["subgroups"]:
        assert s["flagged"] == (s["n_positive"] < 10)
    assert sum(s["n"] for s in lin["subgroups"] if s["column"] == "sex") == lin["n"]
    # the default comparison: the probed features vs baseline-logreg, the same fits
    comp = report["comparison"]
    assert (comp["a"], comp["b"]) == ("image+lesion", "baseline-logreg")
    assert comp["metrics"]["a"]["auc"] == pytest.approx(lin["metrics"]["auc"]["mean"])
    assert comp["metrics"]["b"]["auc"] == pytest.approx(logreg["metrics"]["auc"]["mean"])
    assert comp["delta_auc"] == pytest.approx(
        comp["metrics"]["a"]["auc"] - comp["metrics"]["b"]["auc"]
    )
    # the image carries the label and the metadata is noise: a clear, significant gain
    assert comp["ci"]["delta_auc"][0] > 0 and comp["p_delong"] < 0.01
    off = run_probe(path, seeds=[0], methods=["linear"], bootstrap=0, subgroups=[], compare=None)
    assert off["results"][0]["ci"] is None and "comparison" not in off
    assert "subgroups" not in off["results"][0]
    assert off["results"][0]["metrics"]["ap"] == lin["metrics"]["ap"]


def test_multiclass_reports_the_malignant_task(tmp_path):
    c = cohort(seed=1)
    label = (c["image"][:, 0] > -0.5).astype(int) + (c["image"][:, 1] > 0).astype(int)
    mal = (label == 2).astype(np.int8)  # class 2 is the malignant one
    path = write_cohort(tmp_path / "mc.h5", c, label=label, malignant=mal)
    report = run_probe(
        path, label="multiclass", seeds=[0], methods=["linear"], bootstrap=50, compare=None
    )
    (r,) = report["results"]
    assert {"f1_macro", "ap", "pauc_80", "ece"} <= set(r["metrics"])
    assert 0 < r["n_positive"] < r["n"]
    mixed = mal.copy()
    mixed[np.flatnonzero(label == 1)[:3]] = 1  # class 1 now has malignant and benign rows
    path = write_cohort(tmp_path / "mixed.h5", c, label=label, malignant=mixed)
    report = run_probe(path, label="multiclass", seeds=[0], methods=["linear"], bootstrap=0)
    assert any("malignant task is undefined" in w for w in report["warnings"])
    assert "ap" not in report["results"][0]["metrics"] and "comparison" not in report


def test_what_images_add(clinic):
    _, path = clinic
    out = what_images_add(path, seeds=[0], bootstrap=100)
    assert [r["name"] for r in out["rows"]] == ["model", "metadata+model"]
    assert [(r["a"], r["b"]) for r in out["rows"]] == [
        ("image+lesion", "baseline-logreg"),
        ("raw+image+lesion", "baseline-logreg"),
    ]
    metadata_auc = {r["metrics"]["b"]["auc"] for r in out["rows"]}
    assert len(metadata_auc) == 1  # the same metadata model on the same rows
    for r in out["rows"]:
        assert r["delta_auc"] > 0 and r["ci"]["delta_auc"][0] > 0


def test_reliability_diagram(tmp_path):
    from slimp_cli.eval.plots import reliability

    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    reliability(tmp_path / "r.png", rng.uniform(size=200) < p, p, title="t")
    reliability(tmp_path / "one.png", np.zeros(5, bool), p[:5], title="a single class")
    assert (tmp_path / "r.png").stat().st_size > 5000 and (tmp_path / "one.png").exists()


# --- the installed executable -----------------------------------------------------------------
def _one_line(r, code: int, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stdout + r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_bad_clinical_options_are_one_line(clinic, run_slimp):
    # before any computing (and before the libraries load): the option alone is wrong
    _, path = clinic
    _one_line(run_slimp("probe", path, "--bootstrap", "-1"), 1, "--bootstrap -1")
    line = _one_line(run_slimp("probe", path, "--subgroups", "sex,skin"), 1, "'skin'")
    assert "(columns: region, diameter, age, sex, fitspatrick)" in line
    _one_line(
        run_slimp("probe", path, "--compare", "image+patient", "baseline-logreg"),
        1,
        "has no patient features",
        "it can compare: image, lesion, raw, baseline-logreg, baseline-gbm",
    )


def test_compare_usage(clinic, run_cli):
    _, path = clinic
    r = run_cli("probe", path, "--compare", "image", "metadata")
    assert r.exit_code == 1 and r.stderr.startswith("error: --compare 'metadata': not a feature")
    usage = run_cli("probe", path, "--compare", "image")  # --compare takes two values
    assert usage.exit_code == 2 and "requires 2 arguments" in usage.stderr


def test_single_class_test_split_says_undefined(run_slimp, tmp_path):
    c = cohort(120, seed=2)
    held = c["pid"] % 4 == 0
    label = c["label"].copy()
    label[held] = 0  # the held-out patients are all benign
    path = write_cohort(
        tmp_path / "one.h5", c, sides=np.where(held, "holdout", "train"), label=label
    )
    out = tmp_path / "one.json"
    r = run_slimp("probe", path, "--seeds", "0", "--bootstrap", "50", "--json", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "auc undefined (reported as null)" in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "holds only benign rows" in x]
    assert "ap, pauc_80" in line and line.endswith("undefined (reported as null)")
    report = json.loads(out.read_text())
    lin = report["results"][0]
    assert lin["metrics"]["pauc_80"] == {"mean": None, "std": None}
    assert lin["ci"]["auc"] == [None, None] and lin["n_positive"] == 0
    assert report["comparison"]["delta_auc"] is None
    assert report["comparison"]["p_delong"] is None


def test_subgroups_need_a_decodable_column(tmp_path):
    c = cohort(40)
    path = write_cohort(tmp_path / "s.h5", c)
    with FeatureStore.open(path) as store:
        raw = RawColumns.of(store)
    raw.specs.pop("age")
    with pytest.raises(SlimpError, match="no mean/std"):
        raw.labels("age", np.arange(10))


def test_pad_subgroups_are_the_real_metadata(pad_store, pad_source):
    """On the real PAD-UFES-20 subset: the default columns, decoded, are the table's values."""
    import pandas as pd

    table = pd.read_csv(pad_source / "metadata.csv")
    table["key"] = table.patient_id + "/" + table.lesion_id.astype(str)

    def values(rows, column):
        return {"missing" if pd.isna(v) else v for v in rows[column]}

    with FeatureStore.open(pad_store) as store:
        raw, lesion, patient, n = RawColumns.of(store), store.lesion_id, store.patient_id, store.n
    rows = np.arange(n)
    got = {c: raw.labels(c, rows)[0] for c in ("fitspatrick", "gender", "age", "region")}
    by_patient = dict(list(table.groupby("patient_id")))
    by_lesion = dict(list(table.groupby("key")))
    for i in rows:
        mine = by_patient[patient[i]]  # a patient's rows may disagree (age): any of them
        assert got["gender"][i] in values(mine, "gender")
        fitz = {v if v == "missing" else f"{v:g}" for v in values(mine, "fitspatrick")}
        assert got["fitspatrick"][i] in fitz
        bands = {"<40" if a < 40 else "40-60" if a <= 60 else ">60" for a in mine.age}
        assert got["age"][i] in bands
        assert got["region"][i] in values(by_lesion[lesion[i]], "region")
    report = run_probe(pad_store, methods=["linear"], seeds=[0], bootstrap=200)
    (r,) = report["results"]
    assert list(dict.fromkeys(s["column"] for s in r["subgroups"])) == [
        "fitspatrick",
        "gender",
        "age",
        "region",
    ]
    for column in ("gender", "age", "region"):
        assert sum(s["n"] for s in r["subgroups"] if s["column"] == column) == r["n"]
    assert report["comparison"]["b"] == "baseline-logreg" and report["split"]["kind"] == "holdout"
