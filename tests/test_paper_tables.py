"""benchmarks/paper_tables.py: the CPU preset end to end on the shared PAD-UFES-20 and Derm7pt
subsets (a CI smoke test of a few minutes), its table, and resuming without recomputing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "paper_tables.py"


def _module():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_tables"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _run(*args, timeout=1500):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]


def _mtimes(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for sub in ("shards", "runs", "stores", "results", "stages")
        for p in (out / sub).rglob("*")
        if p.is_file()
    }


def test_stages_skip_what_is_done_and_redo_what_depends_on_a_redone_stage(tmp_path):
    mod = _module()
    calls = []

    def writer(path, text):
        def fn():
            calls.append(path.name)
            path.write_text(text)

        return fn

    a, b, c = (tmp_path / n for n in ("a.txt", "b.txt", "c.txt"))

    def run_all():
        st = mod.Stages(tmp_path, say=lambda m: None)
        st.run("a", a, writer(a, "1"))
        st.run("b", b, writer(b, "2"), deps=["a"])
        st.run("c", c, writer(c, "3"))
        return st

    st = run_all()
    assert calls == ["a.txt", "b.txt", "c.txt"] and st.counts == {"computed": 3, "skipped": 0}
    calls.clear()
    st = run_all()
    assert calls == [] and st.counts == {"computed": 0, "skipped": 3}
    a.unlink()  # an output lost (or never finished): it and what depends on it are redone
    calls.clear()
    run_all()
    assert calls == ["a.txt", "b.txt"]
    # a stage whose function dies leaves no record: the next invocation runs it again
    st = mod.Stages(tmp_path, say=lambda m: None)
    with pytest.raises(ZeroDivisionError):
        st.run("d", tmp_path / "d.txt", lambda: 1 / 0)
    assert not st.record_path("d").exists()
    log = _log(tmp_path)
    assert [x["action"] for x in log[:3]] == ["computed"] * 3
    assert [x["action"] for x in log[3:6]] == ["skipped"] * 3


def test_formatting_of_metrics_and_paper_figures():
    mod = _module()
    assert mod.fmt_metric("accuracy", {"mean": 0.8743, "std": 0.0123, "n": 3}) == "87.4 ± 1.2"
    assert mod.fmt_metric("auc", {"mean": 0.91, "std": 0.0, "n": 1}) == "0.910"
    assert mod.fmt_metric("auc", None) == "—"
    paper = mod.PAPER[("table3", "nested", "image+lesion+patient", "linear")]
    assert [mod.fmt_paper(m, paper) for m in ("accuracy", "balanced_accuracy", "auc")] == [
        "87.4",
        "86.9",
        "0.910",
    ]
    flat = mod.PAPER[("table3", "flat", "image+lesion", "linear")]
    assert (flat["accuracy"], flat["balanced_accuracy"], flat["auc"]) == (85.2, 84.7, 0.902)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, pad_source, derm7pt_source):
    out = tmp_path_factory.mktemp("paper_tables") / "out"
    r = _run("--pad", pad_source, "--derm7pt", derm7pt_source, "--preset", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_cpu_preset_table_has_every_model_on_held_out_patients(cpu_run):
    out, r = cpu_run
    report = json.loads((out / "paper_tables.json").read_text())
    rows = report["classification"]
    for ds, want in (
        ("pad", {"nested", "flat", "image", "metadata"}),
        ("derm7pt", {"flat", "image", "metadata"}),  # no patient metadata: no nested model
    ):
        main = [x for x in rows if x["dataset"] == ds and x["section"] == "table3"]
        assert {x["variant"] for x in main} == want
        assert {x["split"] for x in main} == {"holdout"}
        assert len({x["test_rows"] for x in main}) == 1 and main[0]["test_rows"] > 50
        for x in main:
            acc = x["metrics"]["accuracy"]
            assert 0.0 <= acc["mean"] <= 1.0 and acc["std"] is not None
            if x["variant"] != "metadata":
                assert acc["n"] == 3  # mean ± std over the three pre-training seeds
    # Table 6's ablation on PAD and the paper's figures beside it
    t6 = [x for x in rows if x["section"] == "table6"]
    assert {x["features"] for x in t6} == {"image", "image+lesion", "image+lesion+patient"}
    nested = next(
        x
        for x in rows
        if x["dataset"] == "pad" and x["variant"] == "nested" and x["section"] == "table3"
    )
    assert nested["paper"]["accuracy"] == 87.4 and nested["paper"]["auc"] == 0.910
    assert report["retrieval"] and report["multilabel"]
    assert {x["criterion"] for x in report["multilabel"]} >= {"pigment_network", "mean"}
    assert report["holdout"]["pad"]["rows"] == nested["test_rows"]
    run = report["run"]
    assert run["preset"] == "cpu" and run["seeds"] == [0, 1, 2]
    assert run["machine"]["cpu_count"] and run["versions"]["torch"]
    assert run["git"]["commit"] and run["wall_seconds_this_invocation"] > 0
    md = (out / "paper_tables.md").read_text()
    assert "| PAD-UFES-20 | T3 | SLIMP nested |" in md and " ± " in md and "87.4" in md
    assert "metadata only" in md and "Derm7pt" in md
    # SM3's section: Table I's layout (7 criteria + DIAG + AVG), AUC/Sens./Spec./Prec. rows
    sm3 = report["sm3"]["linear"]
    assert sm3["columns"] == ["BWV", "DaG", "PIG", "PN", "RS", "STR", "VS", "DIAG", "AVG"]
    assert all(len(sm3[row]) == 9 for row in ("AUC", "Sens.", "Spec.", "Prec."))
    assert "| SM3 stage 1 (linear) | BWV (PRS) |" in md
    # one printed table with the paper's figures in adjacent columns
    assert "Acc paper" in r.stdout and "87.4" in r.stdout and "86.9" in r.stdout


def test_second_invocation_recomputes_nothing_and_a_lost_output_only_itself(
    cpu_run, pad_source, derm7pt_source
):
    out, first = cpu_run
    before = _mtimes(out)
    n_first = len(_log(out))
    r = _run("--pad", pad_source, "--derm7pt", derm7pt_source, "--preset", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    second = _log(out)[n_first:]
    assert second and {x["action"] for x in second} == {"skipped"}
    assert _mtimes(out) == before  # not one output rewritten
    report = json.loads((out / "paper_tables.json").read_text())
    assert report["run"]["stages_this_invocation"]["computed"] == 0
    # the same table as the first invocation
    table = lambda text: [l for l in text.splitlines() if "PAD-UFES-20" in l]  # noqa: E731
    assert table(r.stdout) == table(first.stdout)

    lost = out / "results" / "probe-pad-flat-s1-image+lesion.json"
    lost.unlink()
    n = len(_log(out))
    r = _run("--pad", pad_source, "--derm7pt", derm7pt_source, "--preset", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    computed = [x["stage"] for x in _log(out)[n:] if x["action"] == "computed"]
    assert computed == ["probe:pad-flat-s1:image+lesion"] and lost.exists()
    # other settings in the same folder are refused rather than mixed in
    r = _run("--pad", pad_source, "--preset", "cpu", "--out", out, "--seeds", "0")
    assert r.returncode != 0 and "other settings" in r.stderr


def test_an_interrupted_pretraining_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import slimp_cli.train as train

    mod = _module()
    calls = []
    monkeypatch.setattr(train, "pretrain", lambda *a, **kw: calls.append((a, kw)))
    preset = mod.PRESETS["cpu"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-last.pt").write_bytes(b"x")  # a killed run left its last checkpoint
    mod._pretrain(tmp_path / "shards", run, "nested", 1, preset)
    (args, kw) = calls[-1]
    assert kw["resume"] is True and kw["train"]["seed"] == 1 and kw["model"]["variant"] == "nested"
    assert run.is_dir()
    # killed before its first checkpoint: the folder is cleared and training starts afresh
    (run / "checkpoint-last.pt").unlink()
    (run / "holdout.json").write_text("{}")
    mod._pretrain(tmp_path / "shards", run, "flat", 0, preset)
    assert calls[-1][1]["resume"] is False and not run.exists()
