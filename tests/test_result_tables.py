"""`probe --table FILE` / `retrieve --table FILE`: CSV or Markdown by the extension, with the
sizes each number was measured on, equal to the JSON report of the same run."""

from __future__ import annotations

import csv
import json

import pytest

from slimp_cli.core.errors import SlimpError
from slimp_cli.eval.tables import ResultTable, markdown, table_format, write_table


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str):
    return None if text == "" else float(text)


def test_probe_table_csv_is_the_json_report_with_its_sizes(pad_store, tmp_path, run_slimp):
    report, table = tmp_path / "probe.json", tmp_path / "out" / "probe.csv"
    res = run_slimp(
        "probe", pad_store, "--seeds", "0,1", "--bootstrap", "0", "--baseline",
        "--json", report, "--table", table,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    results = json.loads(report.read_text())["results"]
    rows = _csv(table)
    assert len(rows) == len(results) >= 3  # linear, knn and the metadata baselines
    for row, r in zip(rows, results):
        assert (
            (row["method"], row["split"]) == (r["method"], r["split"]) == (r["method"], "holdout")
        )
        assert row["features"] == "+".join(r["features"])
        assert int(row["n"]) == r["n"] and int(row["n_patients"]) == r["n_patients"]
        assert int(row["n_positive"]) == r["n_positive"]
        for m in ("accuracy", "balanced_accuracy", "f1", "auc"):
            assert _num(row[m]) == r["metrics"][m]["mean"]  # full precision, not rounded
            assert _num(row[f"{m}_std"]) == r["metrics"][m]["std"]
    # the held-out rows of this store, counted independently of the probe
    from slimp_cli.features.store import FeatureStore

    with FeatureStore.open(pad_store) as st:
        n_holdout = int((st.split == "holdout").sum())
    assert {int(row["n"]) for row in rows} == {n_holdout}
    # the terminal table shows n and n_positive too
    header = next(line for line in res.stdout.splitlines() if "method" in line)
    assert " n " in header and "n_positive" in header
    assert f" {n_holdout} " in res.stdout


def test_retrieve_table_markdown_has_each_tasks_query_count(pad_store, tmp_path, run_slimp):
    report, table = tmp_path / "r.json", tmp_path / "r.md"
    res = run_slimp("retrieve", pad_store, "--json", report, "--table", table)
    assert res.returncode == 0, res.stderr
    rep = json.loads(report.read_text())
    lines = table.read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:4] == ["task", "split", "n_queries", "n_gallery"] and "R@1" in head
    assert lines[1].startswith("|---|---|---:|---:|")
    body = {
        cells[0]: dict(zip(head, cells))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    }
    # patients have several lesions here: the per-task counts differ
    assert rep["n_patients"] < rep["n_queries"]
    expected = {
        "image_to_lesion": rep["n_queries"],
        "lesion_to_image": rep["n_lesions"],
        "patient_to_image": rep["n_patients"],
    }
    for task, n in expected.items():
        assert int(body[task]["n_queries"]) == n
        assert body[task]["split"] == rep["split"]["kind"]
        assert body[task]["R@1"] == f"{rep[task]['R@1']:.3f}"
    assert "n_queries" in res.stdout


def test_a_table_name_without_csv_or_md_is_bad_usage(pad_store, tmp_path, run_slimp):
    res = run_slimp("retrieve", pad_store, "--table", tmp_path / "r.xlsx")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "give a .csv or .md file name" in res.stderr
    assert not (tmp_path / "r.xlsx").exists()


def test_writer_formats_escapes_and_leaves_missing_cells_empty(tmp_path):
    table = ResultTable(
        columns=["name", "n", "auc"],
        rows=[["a|b, c", 28, 0.81234], ["c", None, float("nan")]],
    )
    assert markdown(table) == (
        "| name | n | auc |\n|---|---:|---:|\n| a\\|b, c | 28 | 0.812 |\n| c | - | - |\n"
    )
    write_table(tmp_path / "t.csv", table)
    assert (tmp_path / "t.csv").read_text() == 'name,n,auc\n"a|b, c",28,0.81234\nc,,\n'
    assert table_format("x.MD") == "markdown"
    with pytest.raises(SlimpError, match="give a .csv or .md"):
        write_table(tmp_path / "t.txt", table)
    assert not (tmp_path / "t.txt").exists()
    with pytest.raises(ValueError):
        ResultTable(columns=["a"], rows=[[1, 2]])
