"""`slimp probe / retrieve / extrapolate` through the real entry point (`cli.main`)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest


@pytest.fixture()
def stores(write_store, tmp_path):
    rng = np.random.default_rng(0)
    n, d = 200, 5
    pid = np.arange(n) // 2
    feats = {
        "image": rng.normal(size=(n, d)),
        "lesion": rng.normal(size=(n, d)),
        "patient": rng.normal(size=(n // 2, d))[pid],
    }
    feats = {k: v.astype(np.float32) for k, v in feats.items()}
    label = (feats["image"][:, 0] + feats["lesion"][:, 0] > 0).astype(int)
    raw = (
        np.column_stack([label, rng.normal(size=n)]).astype(np.float32),
        ["biopsed", "age"],
        ["biopsed", "age"],
    )
    ref = write_store(
        tmp_path / "ref.h5",
        features=feats,
        patient_id=pid,
        label=label,
        raw={"lesion": raw},
        phenotype=(rng.normal(size=(d, 2 * d)).astype(np.float32), np.zeros(d, np.float32)),
    )
    tgt = write_store(
        tmp_path / "tgt.h5",
        features={"image": feats["image"][:80]},
        patient_id=np.arange(80),
        label=label[:80],
    )
    return ref, tgt


def test_probe_json(run_cli, stores, tmp_path):
    ref, _ = stores
    out = tmp_path / "probe.json"
    r = run_cli(
        "probe",
        ref,
        "--seeds",
        "0,1",
        "--low-shot",
        "0.1",
        "--k",
        "5",
        "--baseline",
        "--json",
        out,
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert "linear" in r.stdout and "baseline-gbm" in r.stdout
    assert "leakage: raw column 'biopsed'" in r.stderr
    report = json.loads(out.read_text())
    # comparison: the default --compare (the probed features vs baseline-logreg)
    assert set(report) == {"results", "split", "comparison", "warnings"}
    # a store without held-out patients: the lesion-grouped random split, nothing seen
    assert report["split"]["kind"] == "random" and report["split"]["holdout_fingerprint"] is None
    assert report["split"]["test_rows_seen_in_pretraining"] == 0
    methods = {(x["method"], x["low_shot"]) for x in report["results"]}
    assert (
        ("linear", None) in methods
        and ("knn", 0.1) in methods
        and ("baseline-logreg", None) in methods
    )
    for x in report["results"]:
        assert {"method", "split", "features", "label", "low_shot", "seeds", "metrics"} <= set(x)
        assert x["seeds"] == [0, 1]
        for name in ("accuracy", "balanced_accuracy", "f1", "auc"):
            assert set(x["metrics"][name]) == {"mean", "std"}


def test_retrieve_json_and_plots(run_cli, stores, tmp_path):
    ref, _ = stores
    out = tmp_path / "ret.json"
    r = run_cli(
        "retrieve",
        ref,
        "--json",
        out,
        "--plots",
        tmp_path / "figs",
        "--negatives",
        "500",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    for task in ("image_to_lesion", "lesion_to_image", "image_to_patient", "patient_to_image"):
        assert set(report[task]) >= {
            "R@1",
            "R@5",
            "R@10",
            "R@15",
            "R@20",
            "R@100",
            "NDCG@10",
            "mAP",
        }
    assert set(report["similarity_percentiles"]["matching"]) == {
        "2",
        "10",
        "25",
        "50",
        "75",
        "90",
        "98",
    }
    assert (tmp_path / "figs" / "similarity.png").exists()


def test_extrapolate_then_probe_pseudo(run_cli, stores):
    ref, tgt = stores
    r = run_cli(
        "extrapolate", ref, tgt, "--strategy", "ilp", "--device", "cpu", "--chunk-size", "16"
    )
    assert r.exit_code == 0, r.output
    assert "pseudo/ilp" in r.stdout
    r = run_cli("probe", tgt, "--pseudo", "ilp", "--seeds", "0", "--k", "3", "--device", "cpu")
    assert r.exit_code == 0, r.output


def _one_line_error(r, fragment: str) -> None:
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_bad_input_errors(run_cli, stores, tmp_path):
    ref, tgt = stores
    _one_line_error(run_cli("probe", tmp_path / "nope.h5"), "not found")
    (tmp_path / "junk.h5").write_text("junk")
    _one_line_error(run_cli("probe", tmp_path / "junk.h5"), "not an HDF5 file")
    _one_line_error(run_cli("probe", tgt, "--features", "patient"), "no features/patient")
    _one_line_error(run_cli("probe", ref, "--low-shot", "2"), "--low-shot")
    _one_line_error(run_cli("probe", ref, "--seeds", "a,b"), "--seeds")
    _one_line_error(
        run_cli("probe", ref, "--task", "derm7pt-multilabel"), "no 'pigment_network' columns"
    )
    bad_choice = run_cli("probe", ref, "--task", "segmentation")  # a Typer choice: bad usage
    assert bad_choice.exit_code == 2 and "derm7pt-multilabel" in bad_choice.stderr
    _one_line_error(run_cli("probe", tgt, "--pseudo", "ii"), "no pseudo/ii")
    _one_line_error(run_cli("retrieve", tgt), "no features/lesion")
    _one_line_error(run_cli("extrapolate", tgt, ref), "no features/lesion")
    with h5py.File(ref, "r+") as f:
        f.attrs["complete"] = False
    _one_line_error(run_cli("probe", ref), "is incomplete (interrupted embed?); re-run slimp embed")
    _one_line_error(run_cli("retrieve", ref), "incomplete")
