"""benchmarks/paper_tables.py: the papers' recipes (against the paper and docs/method.md), the
image-only baseline's budget from the real samplers, and the CPU preset end to end on the shared
PAD-UFES-20 and Derm7pt subsets with a generated SLICE-3D-shaped cohort (pretrain -> adapt ->
probe): every table row checked against the files it came from; resuming without recomputing."""

from __future__ import annotations

import hashlib
import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "paper_tables.py"
METHOD_MD = REPO / "docs" / "method.md"
SEEDS = "0,1"  # two pre-training seeds: a mean ± std at two thirds of three seeds' time


def _module():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_tables"] = mod
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


# ------------------------------------------------------------------------------------------
# stages, formatting
# ------------------------------------------------------------------------------------------
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
    paper = mod.PAPER["T3 nested"]
    assert [mod.fmt_paper(m, paper) for m in ("accuracy", "balanced_accuracy", "auc")] == [
        "87.4",
        "86.9",
        "0.910",
    ]
    # the paper's rows, by hand from slimp_paper.txt: Table 3, Table 2, Table 18
    assert (mod.PAPER["T3 flat"]["accuracy"], mod.PAPER["T3 flat"]["auc"]) == (85.2, 0.902)
    t2 = {k: mod.PAPER[f"T2 {k}"]["balanced_accuracy"] for k in ("SimCLR", "IMAGE", "B=4")}
    assert t2 == {"SimCLR": 70.5, "IMAGE": 75.5, "B=4": 90.2}
    assert mod.PAPER["T18 B=4"]["accuracy"] == 93.5


# ------------------------------------------------------------------------------------------
# the recipes: PRESETS["paper"] against the paper and against docs/method.md
# ------------------------------------------------------------------------------------------
def _docs_recipe_block() -> str:
    mod = _module()
    from benchmarks.paper.recipes import RECIPE_BEGIN, RECIPE_END

    text = METHOD_MD.read_text()
    assert RECIPE_BEGIN in text and RECIPE_END in text, "docs/method.md lost its recipe table"
    block = text.split(RECIPE_BEGIN, 1)[1].split(RECIPE_END, 1)[0].strip()
    return mod, block


def test_the_docs_recipe_table_is_the_paper_preset():
    """docs/method.md holds `--recipe-table --preset paper` verbatim (regenerate it after a
    preset change), and its cells parse back to PRESETS["paper"]."""
    mod, block = _docs_recipe_block()
    assert block == mod.recipe_markdown("paper").strip(), (
        "docs/method.md's recipe table drifted from PRESETS['paper']: paste the output of "
        "`python benchmarks/paper_tables.py --recipe-table --preset paper`"
    )
    lines = [line for line in block.splitlines() if line.startswith("| `")]
    head = [c.strip() for c in block.splitlines()[0].strip("|").split("|")]
    stages = mod.PRESETS["paper"]["stages"]
    parsed = {}
    for line in lines:
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        parsed[cells["stage"].strip("`")] = cells
    assert set(parsed) == set(stages)
    for name, cells in parsed.items():
        recipe = stages[name]
        assert cells["epochs"] == str(recipe["epochs"])
        assert cells["N (lesions)"] == str(recipe["lesions_per_patient"])
        if "lr" in recipe:
            assert float(cells["lr"]) == recipe["lr"]
        if not name.endswith("_image"):
            assert int(cells["B (patients)"]) == recipe["patients_per_batch"]
        assert cells["trains"] == ("embedding layers" if name == "adapt" else "all")
        assert cells["paper"]


def test_the_paper_preset_follows_the_paper():
    """Sec. 4.2 / App. D of slimp_paper.txt, written out by hand."""
    mod = _module()
    p = mod.PRESETS["paper"]
    assert p["model"]["image_model"] == "vit_small_patch16_224" and p["model"]["img_size"] == 224
    sl, ad = p["stages"]["slice3d"], p["stages"]["adapt"]
    # pre-training on SLICE-3D: B = 4 patients, N = 100 lesions, 150 epochs, AdamW 1e-4
    assert (sl["patients_per_batch"], sl["lesions_per_patient"], sl["epochs"], sl["lr"]) == (
        4,
        100,
        150,
        1e-4,
    )
    # continual pre-training: B = 64, 100 epochs, embedding layers only, AdamW 1e-4
    assert (ad["patients_per_batch"], ad["epochs"], ad["lr"], ad["tune"]) == (
        64,
        100,
        1e-4,
        "embeddings",
    )
    # from scratch (Table 3): the pre-training recipe (docs/method.md says why B = 4)
    sc = p["stages"]["scratch"]
    assert {k: sc[k] for k in ("patients_per_batch", "lesions_per_patient", "epochs", "lr")} == {
        k: sl[k] for k in ("patients_per_batch", "lesions_per_patient", "epochs", "lr")
    }
    # SimCLR: its own batch and lr (the library's defaults), the same N and epochs as its twin
    for image, twin in (("scratch_image", "scratch"), ("slice3d_image", "slice3d")):
        r = p["stages"][image]
        assert "lr" not in r and "images_per_batch" not in r
        assert (r["lesions_per_patient"], r["epochs"]) == (
            p["stages"][twin]["lesions_per_patient"],
            p["stages"][twin]["epochs"],
        )
    assert p["holdout"]["holdout"] == 0.1  # the paper's 90/10 split
    assert p["probe"] == {"classifier": "linear"}  # Sec. 4.2: BCE + AdamW linear probe
    assert p["sm3_probe"] == {"split": "official"}  # SM3: Kawahara's fixed split
    # the CI preset keeps the continual stage's B = 64 too
    assert mod.PRESETS["cpu"]["stages"]["adapt"]["patients_per_batch"] == 64
    assert mod.PRESETS["cpu"]["probe"] == {}  # CI runs the library's default probe


# ------------------------------------------------------------------------------------------
# the image-only baseline's budget, from the real samplers on the PAD subset
# ------------------------------------------------------------------------------------------
def _enumerate(sampler, epochs: int) -> tuple[int, int]:
    """(steps, images) of a sampler's plans over `epochs`, every rank."""
    steps = images = 0
    for e in range(epochs):
        plan = sampler.plan(e)
        steps += len(plan)
        images += sum(len(it.lesions) for items in plan for it in items)
    return steps, images


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_the_simclr_baseline_sees_the_nested_runs_images_at_its_own_batch(pad_shards, preset):
    from slimp_cli.data.holdout import choose_holdout, patient_positives
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.train import TrainConfig
    from slimp_cli.train.budget import budget, image_recipe
    from slimp_cli.train.data import PatientBatchSampler, patient_infos

    mod = _module()
    p = mod.PRESETS[preset]
    index = ShardIndex.open(pad_shards)
    infos = patient_infos(index)
    ids, positive = patient_positives(index)
    held = choose_holdout(ids, positive, fraction=p["holdout"]["holdout"], seed=0)
    use = [i for i, pid in enumerate(ids) if pid not in held]
    nested_opts = mod.stage_recipe(p, "scratch", seed=0)
    image_opts = mod.stage_recipe(p, "scratch_image", seed=0)
    nested = TrainConfig.from_dict(nested_opts)
    image, record = image_recipe(TrainConfig.from_dict(image_opts), set(image_opts), infos, use)
    B, N, E = nested.patients_per_batch, nested.lesions_per_patient, nested.epochs
    per_epoch = sum(min(infos[i].n_lesions, N) for i in use)  # every patient's <= N images

    # the batch and lr: the preset's, or the SimCLR defaults (256 capped, 1.5e-4 x batch/256)
    if preset == "cpu":
        assert (image.images_per_batch, image.lr) == (64, 1e-3)
        assert record["images_per_batch_from"] == record["lr_from"] == "given"
    else:
        assert image.images_per_batch == min(256, per_epoch // 4) != B * N
        assert image.lr == pytest.approx(1.5e-4 * image.images_per_batch / 256)
    # nested: the real sampler's plans, enumerated here
    s_nested = PatientBatchSampler(
        infos, patients_per_batch=B, lesions_per_patient=N, seed=0, use=use
    )
    steps_n, seen_n = _enumerate(s_nested, E)
    assert steps_n == E * (len(use) // B)
    got = budget(infos, nested, per_image=False, use=use)
    assert (got["steps"], got["images_seen"]) == (steps_n, seen_n)
    # SimCLR: the same sampler in image mode
    s_image = PatientBatchSampler(
        infos,
        patients_per_batch=B,
        lesions_per_patient=N,
        seed=0,
        use=use,
        images_per_batch=image.images_per_batch,
    )
    steps_i, seen_i = _enumerate(s_image, E)
    assert steps_i == E * (per_epoch // image.images_per_batch)
    assert seen_i == steps_i * image.images_per_batch
    assert record["run"]["steps"] == steps_i and record["run"]["images_seen"] == seen_i
    assert record["nested_equivalent"]["steps"] == steps_n
    assert record["nested_equivalent"]["images_seen"] == seen_n
    # same images seen: each epoch both draw every training patient's <= N images, less one
    # incomplete batch (SimCLR) or the few patients of an incomplete batch (nested)
    assert E * (per_epoch - image.images_per_batch) < seen_i <= E * per_epoch
    dropped = sorted((min(infos[i].n_lesions, N) for i in use), reverse=True)[: B - 1]
    assert E * (per_epoch - sum(dropped)) <= seen_n <= E * per_epoch
    # and many more nested steps: SimCLR's batch is ~images_per_batch / 1.3 patients wide
    assert steps_n > 3 * steps_i


# ------------------------------------------------------------------------------------------
# the CPU preset end to end, SLICE-3D generated: pretrain -> adapt -> probe
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, pad_source, derm7pt_source):
    out = tmp_path_factory.mktemp("paper_tables") / "out"
    r = _run(
        "--pad", pad_source, "--derm7pt", derm7pt_source, "--preset", "cpu",
        "--slice3d-synth", 60, "--seeds", SEEDS, "--out", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r, json.loads((out / "paper_tables.json").read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_row_is_the_mean_of_the_probe_files_it_names(cpu_run):
    out, _, report = cpu_run
    rows = report["classification"]
    assert rows
    for row in rows:
        files = [json.loads((out / f).read_text()) for f in row["files"]]
        if row["variant"] == "metadata":
            (base,) = files
            src = next(r for r in base["results"] if r["method"] == row["method"])
            for m, v in row["metrics"].items():
                assert v["mean"] == (src["metrics"].get(m) or {}).get("mean"), (row["model"], m)
            continue
        assert len(files) == 2 and row["seeds_over"] == "pre-training seeds"
        feats = None if row["pseudo"] else row["features"].split("+")
        for m, v in row["metrics"].items():
            vals = []
            for rep in files:
                src = next(
                    r for r in rep["results"] if r["method"] == row["method"] and not r["low_shot"]
                )
                assert src["pseudo"] == row["pseudo"]
                if feats is not None:
                    assert src["features"] == feats
                vals.append(src["metrics"][m]["mean"])
            assert v["mean"] == pytest.approx(np.mean(vals), abs=1e-12), (row["model"], m)
            assert v["std"] == pytest.approx(np.std(vals), abs=1e-12)
            assert row["per_seed"][m] == vals


def test_every_row_of_a_dataset_is_scored_on_the_same_held_out_patients(cpu_run):
    from slimp_cli.features.store import FeatureStore

    out, _, report = cpu_run
    for ds in ("pad", "derm7pt"):
        fp = report["holdout"][ds]["fingerprint"]
        rows = [r for r in report["classification"] if r["dataset"] == ds]
        assert {r["holdout_fingerprint"] for r in rows} == {fp}
        assert {r["split"] for r in rows} == {"holdout"}
        stores = sorted((out / "stores").glob(f"{ds}-*.h5"))
        assert len(stores) >= 12
        for store in stores:
            with FeatureStore.open(store) as st:
                held = st.patient_id[st.split == "holdout"]
                assert st.split_fingerprint == fp, store.name
                assert len(set(held)) == report["holdout"][ds]["patients"]
        # a model that never saw the target (Pre-SLIMP) is scored on those patients too
        with FeatureStore.open(out / "stores" / f"{ds}-pre-nested-s0.h5") as st:
            assert st.feature_names == ["image"] and not st.config["seen_in_training"]
            assert Path(st.config["checkpoint"]).parent.name == "slice3d-nested-s0"


def test_the_adapt_stage_ran_on_each_target_from_the_slice3d_run(cpu_run):
    from slimp_cli.models.runs import read_config, read_metrics

    out, _, report = cpu_run
    slice_manifest = _sha256(out / "shards" / "slice3d" / "manifest.json")
    for ds in ("pad", "derm7pt"):
        target = _sha256(out / "shards" / ds / "manifest.json")
        for variant in ("nested", "flat"):
            for seed in (0, 1):
                cfg = read_config(out / "runs" / f"{ds}-adapted-{variant}-s{seed}")
                assert cfg["kind"] == "adapt" and cfg["tune"] == "embeddings"
                assert cfg["data"]["manifest_sha256"] == target
                assert cfg["train"]["patients_per_batch"] == 64  # the paper's continual B
                assert cfg["source"]["data"]["manifest_sha256"] == slice_manifest
                assert Path(cfg["source"]["checkpoint"]).parent.name == (
                    f"slice3d-{variant}-s{seed}"
                )
                # embedding layers only: the ViT patch embedding and the tabular inputs
                assert cfg["trainable"] and all(
                    n.startswith("image_encoder.patch_embed.") or ".inputs." in n or "cls" in n
                    for n in cfg["trainable"]
                )
                steps = read_metrics(out / "runs" / f"{ds}-adapted-{variant}-s{seed}")
                assert steps[-1]["step"] > 0
        rec = next(
            r for r in report["training"] if r["dataset"] == ds and r["model"] == "SLIMP_B=4"
        )
        assert [s["stage"] for s in rec["stages"]] == ["pretrain on slice3d", f"adapt on {ds}"]
        assert rec["stages"][1]["patients_per_batch"] == 64
        assert rec["stages"][1]["tune"] == "embeddings"


def test_steps_and_images_seen_are_the_samplers_and_the_runs(cpu_run):
    """Each training record against its run (steps done) and the sampler rebuilt here."""
    from slimp_cli.data.holdout import read_holdout
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.models.runs import read_config, read_metrics
    from slimp_cli.train.data import PatientBatchSampler, patient_infos

    out, r, report = cpu_run
    infos_of = {}
    checked = 0
    for rec in report["training"]:
        for st in rec["stages"]:
            for tag, done, seen in zip(st["runs"], st["steps_done"], st["images_seen"]):
                run = out / "runs" / tag
                cfg = read_config(run)
                assert done == read_metrics(run)[-1]["step"] == st["steps"]
                data = "slice3d" if tag.startswith("slice3d") else rec["dataset"]
                if data not in infos_of:
                    index = ShardIndex.open(out / "shards" / data)
                    ids = [index.patient(i).patient_id for i in range(len(index))]
                    infos_of[data] = (patient_infos(index), ids)
                infos, ids = infos_of[data]
                held = read_holdout(run)
                t = cfg["train"]
                image = cfg["variant"] == "image"
                sampler = PatientBatchSampler(
                    infos,
                    patients_per_batch=t["patients_per_batch"],
                    lesions_per_patient=t["lesions_per_patient"],
                    positive_sampling=t["positive_sampling"],
                    seed=t["seed"],
                    use=[i for i, pid in enumerate(ids) if pid not in held],
                    images_per_batch=t["images_per_batch"] if image else None,
                )
                assert _enumerate(sampler, t["epochs"]) == (done, seen), tag
                checked += 1
    assert checked >= 24
    # the SimCLR baselines: the nested run's images seen (less < 1 batch an epoch), fewer steps
    for ds in ("pad", "derm7pt"):
        recs = {x["model_key"]: x["stages"] for x in report["training"] if x["dataset"] == ds}
        img, twin = recs["scratch-image"][0], recs["scratch-flat"][0]
        for a, b in zip(img["images_seen"], twin["images_seen"]):
            assert b - img["epochs"] * img["images_per_batch"] < a <= b
        assert img["steps"] < twin["steps"]
    assert "images seen" in r.stdout and "steps" in r.stdout


def test_the_tables_put_the_papers_figures_beside_the_same_pipeline(cpu_run):
    out, r, report = cpu_run
    rows = report["classification"]

    def row(ds, section, model, features=None, method=None):
        return next(
            x
            for x in rows
            if x["dataset"] == ds
            and x["section"] == section
            and x["model"] == model
            and (features is None or x["features"] == features)
            and (method is None or x["method"] == method)
        )

    assert row("pad", "T3", "SLIMP nested")["paper"]["accuracy"] == 87.4
    assert row("pad", "T3", "image-only SimCLR")["paper"] is None  # the paper has no such row
    assert row("pad", "T2", "SLIMP_B=4")["paper"]["balanced_accuracy"] == 90.2
    assert row("pad", "T2", "Ret-SLIMP")["pseudo"] == "ilp"
    assert row("pad", "T6", "SLIMP_B=4", "image", "knn")["paper"]["accuracy"] == 74.8
    assert row("pad", "T18", "SimCLR (SLICE-3D)")["paper"]["accuracy"] == 67.4
    assert all(x["paper"] is None for x in rows if x["dataset"] == "derm7pt")
    # Derm7pt has no patient metadata: no nested model of its own, no patient features
    assert not [x for x in rows if x["dataset"] == "derm7pt" and x["model"] == "SLIMP nested"]
    assert not [
        x
        for x in rows
        if x["dataset"] == "derm7pt" and x["pseudo"] is None and "patient" in x["features"]
    ]
    sections = {x["section"] for x in rows}
    assert sections == {"T3", "T3-knn", "T3-ablation", "T2", "T18", "T6"}
    retrieval = {(x["dataset"], x["model"], x["task"]) for x in report["retrieval"]}
    assert ("pad", "SLIMP_B=4", "image_to_lesion") in retrieval
    t20 = next(
        x for x in report["retrieval"] if x["model"] == "SLIMP_B=4" and x["dataset"] == "pad"
    )
    assert t20["paper"]["source"] == "Table 20"
    assert {x["criterion"] for x in report["multilabel"]} >= {"pigment_network", "mean"}
    sm3 = report["sm3"]["linear"]
    assert sm3["columns"] == ["BWV", "DaG", "PIG", "PN", "RS", "STR", "VS", "DIAG", "AVG"]
    run = report["run"]
    assert run["preset"] == "cpu" and run["seeds"] == [0, 1]
    assert run["settings"]["slice3d"] == "synth:60"
    assert run["git"]["commit"] and run["wall_seconds_this_invocation"] > 0
    md = (out / "paper_tables.md").read_text()
    nested = row("pad", "T3", "SLIMP nested")
    acc = nested["metrics"]["accuracy"]
    cell = f"{acc['mean'] * 100:.1f} ± {acc['std'] * 100:.1f}"
    assert (
        f"| PAD-UFES-20 | T3 | SLIMP nested | image+lesion+patient | linear | {cell} | 87.4 |" in md
    )
    assert re.search(
        r"\| PAD-UFES-20 \| SLIMP_B=4 \| adapt on pad \| embeddings \| 64 patients", md
    )
    assert "| SM3 stage 1 (linear) | BWV (PRS) |" in md
    assert "Acc paper" in r.stdout and "90.9" in r.stdout


def test_second_invocation_recomputes_nothing_and_a_lost_output_only_itself(
    cpu_run, pad_source, derm7pt_source
):
    out, first, _ = cpu_run
    args = (
        "--pad", pad_source, "--derm7pt", derm7pt_source, "--preset", "cpu",
        "--slice3d-synth", 60, "--seeds", SEEDS, "--out", out,
    )  # fmt: skip
    before = _mtimes(out)
    n_first = len(_log(out))
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    second = _log(out)[n_first:]
    assert second and {x["action"] for x in second} == {"skipped"}
    assert _mtimes(out) == before  # not one output rewritten
    report = json.loads((out / "paper_tables.json").read_text())
    assert report["run"]["stages_this_invocation"]["computed"] == 0
    table = lambda text: [l for l in text.splitlines() if "PAD-UFES-20" in l]  # noqa: E731
    assert table(r.stdout) == table(first.stdout)

    lost = out / "results" / "probe-pad-adapted-flat-s1-image+lesion.json"
    lost.unlink()
    n = len(_log(out))
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    computed = [x["stage"] for x in _log(out)[n:] if x["action"] == "computed"]
    assert computed == ["probe:pad-adapted-flat-s1:image+lesion"] and lost.exists()
    # other settings in the same folder are refused rather than mixed in
    r = _run("--pad", pad_source, "--preset", "cpu", "--out", out, "--seeds", "0")
    assert r.returncode != 0 and "other settings" in r.stderr


def test_an_interrupted_pretraining_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import slimp_cli.train as train

    mod = _module()
    calls = []
    monkeypatch.setattr(train, "pretrain", lambda *a, **kw: calls.append((a, kw)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-last.pt").write_bytes(b"x")  # a killed run left its last checkpoint
    opts = mod.stage_recipe(mod.PRESETS["cpu"], "scratch", seed=1)
    mod._pretrain(tmp_path / "shards", run, {"variant": "nested"}, opts)
    (args, kw) = calls[-1]
    assert kw["resume"] is True and kw["train"]["seed"] == 1 and kw["model"]["variant"] == "nested"
    assert run.is_dir()
    # killed before its first checkpoint: the folder is cleared and training starts afresh
    (run / "checkpoint-last.pt").unlink()
    (run / "holdout.json").write_text("{}")
    mod._pretrain(tmp_path / "shards", run, {"variant": "flat"}, opts)
    assert calls[-1][1]["resume"] is False and not run.exists()


# ------------------------------------------------------------------------------------------
# --report FILE.html: the page of a report's tables (rendered from a small report JSON)
# ------------------------------------------------------------------------------------------
def _small_report(mod) -> dict:
    metric = {"mean": 0.8123, "std": 0.0211, "n": 2}
    return {
        "format": "slimp-paper-tables",
        "version": 2,
        "sections": {"T3": "from scratch on the target"},
        "classification": [
            {
                "dataset": "pad",
                "section": "T3",
                "model": "SLIMP nested",
                "features": "image+lesion+patient",
                "method": "linear",
                "metrics": {m: metric for m in ("accuracy", "balanced_accuracy", "f1", "auc")},
                "paper": mod.PAPER["T3 nested"],
            }
        ],
        "training": [
            {
                "dataset": "pad",
                "model": "SLIMP nested",
                "stages": [
                    {
                        "stage": "pretrain",
                        "tune": "all",
                        "images_per_step": "4 patients",
                        "epochs": 3,
                        "steps_done": [30, 30],
                        "images_seen": [900, 912],
                        "lr": 1e-4,
                    }
                ],
            }
        ],
        "retrieval": [
            {
                "dataset": "pad",
                "model": "SLIMP nested",
                "task": "image_to_lesion",
                "queries": 52,
                "metrics": {m: metric for m in ("R@1", "R@5", "R@10", "mAP")},
                "paper": None,
            }
        ],
        "multilabel": [],
        "holdout": {"pad": {"rows": 52, "patients": 42, "malignant": 20, "fingerprint": "ab12"}},
        "run": {"preset": "cpu", "seeds": [0, 1]},
        "warnings": ["pad: a <script>alert(1)</script> in a warning stays text"],
        "sm3": None,
        "images_add": [],
    }


def test_report_html_is_the_tables_on_one_page_without_external_requests(tmp_path):
    mod = _module()
    from slimp_cli.app.html import external_references

    out = tmp_path / "out"
    out.mkdir()
    report = _small_report(mod)
    (out / "paper_tables.json").write_text(json.dumps(report))
    page_path = tmp_path / "pages" / "tables.html"
    r = _run("--out", out, "--report", page_path, timeout=300)
    assert r.returncode == 0, r.stderr
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and external_references(page) == []
    assert "default-src 'none'" in page  # the browser would refuse any request anyway
    # every table of paper_tables.md, cell for cell (the same formatting functions)
    tables = mod.report_tables(report)
    assert [t.split(":")[0].split(" ")[0] for t, _, _ in tables] == ["T3", "Training", "Image"]
    assert ">image_to_lesion<" in page and ">Acc paper<" in page and ">R@1 paper<" in page
    for title, head, body in tables:
        assert f"<h3>{html.escape(title, quote=True)}</h3>" in page
        for cell in [*head, *body[0]]:
            assert f">{html.escape(cell, quote=True)}<" in page, cell
    assert ">81.2 ± 2.1<" in page and ">87.4<" in page  # Acc beside the paper's 87.4
    assert ">900-912<" in page and ">52<" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)" in page
    assert "preset cpu" in page


def test_report_html_refuses_other_names_and_a_folder_without_tables(tmp_path):
    r = _run("--out", tmp_path, "--report", tmp_path / "tables.pdf", timeout=300)
    assert r.returncode == 2 and "give an .html file name" in r.stderr
    r = _run("--out", tmp_path, "--report", tmp_path / "tables.html", timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'paper_tables.json'}: no such file (run the benchmark into --out "
        "first)"
    ]
    assert not (tmp_path / "tables.html").exists()
