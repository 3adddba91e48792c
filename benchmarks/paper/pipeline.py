"""The benchmark's stages, in order (library calls, no subprocesses).

Experiment `scratch` (always): per target, pre-train the nested, flat and image-only models on
the target from random weights -> embed -> probe. Experiment `slice3d` (`--slice3d DIR` or
`--slice3d-synth N`): pre-train on SLICE-3D once per seed -> `adapt` onto each target (embedding
layers only) -> embed -> probe; the SLICE-3D models also embed each target image-only (Pre-SLIMP,
SimCLR) and, with SLICE-3D's own store as reference, extrapolate its metadata (Ret-SLIMP).
Every store of a target is scored on the same held-out patients: runs on the target hold out
the preset's fraction with the same seed (the same patients), and stores of models that never
trained on the target are marked with those patients (`store.mark_split`). What is computed
follows from the rows of `spec.SECTIONS` of the experiments run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from slimp_cli.core.paths import read_json, write_json

from .recipes import IMAGE_STAGE, PRESETS, stage_recipe
from .spec import (
    IMAGES_ADD,
    METADATA,
    MODELS,
    MULTILABEL,
    RETRIEVAL,
    SECTIONS,
    Model,
    model_features,
)
from .stages import Stages

DATASETS = {"pad": "pad-ufes-20", "derm7pt": "derm7pt"}


# ------------------------------------------------------------------------------------------
# the stages themselves
# ------------------------------------------------------------------------------------------
def _ingest(fmt: str, source: Path, dest: Path, preset: dict) -> None:
    from slimp_cli.ingest import ingest

    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ingest(
        fmt,
        source,
        tmp,
        image_size=preset["image_size"],
        workers=preset["ingest_workers"],
        overwrite=True,
    )
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _generate_slice3d(dest: Path, patients: int, preset: dict) -> None:
    from slimp_cli.ingest.synth import generate_slice3d_cohort

    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    generate_slice3d_cohort(tmp, patients=patients, seed=0, image_size=preset["synth_image_size"])
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _fresh(run: Path) -> bool:
    """True to resume: an interrupted run continues from its last checkpoint; a run dir
    without one restarts."""
    resume = (run / "checkpoint-last.pt").is_file()
    if run.exists() and not resume:
        shutil.rmtree(run)
    return resume


def _pretrain(shards: Path, run: Path, model: dict, train: dict) -> None:
    from slimp_cli.train import pretrain

    pretrain(shards, run, model=model, train=train, resume=_fresh(run))


def _adapt(source: Path, shards: Path, run: Path, train: dict, tune: str) -> None:
    from slimp_cli.train import adapt

    adapt(source, shards, run, train=train, tune=tune, resume=_fresh(run))


def _embed(run: Path, shards: Path, store: Path, preset: dict, *, mark=None) -> None:
    """Embed (image-only when `mark`: a model that never trained on this data, whose rows are
    then marked with the target's held-out patients `mark`, a Holdout)."""
    from slimp_cli.features.embed import embed
    from slimp_cli.features.store import FeatureStore, mark_split

    # marked under a name of its own, then renamed: a store at `store` is always complete
    tmp = store.with_name(f".{store.stem}.unmarked.h5") if mark is not None else store
    embed(
        run,
        shards,
        tmp,
        batch_size=preset["embed_batch"],
        device=preset["device"],
        image_only=mark is not None,
        overwrite=True,
    )
    if mark is not None:
        with FeatureStore.open(tmp) as st:
            sides = ["holdout" if pid in mark else "train" for pid in st.patient_id]
        mark_split(tmp, sides, fingerprint=mark.fingerprint, fraction=mark.fraction)
        os.replace(tmp, store)


def _save(path: Path, fn: Callable[[], dict]) -> Callable[[], None]:
    return lambda: write_json(path, fn())


def target_holdout(shards: Path, preset: dict):
    """The held-out patients every run on this data draws (data/holdout.py, the preset's fraction
    and seed): what stores of models that never trained on it are scored on."""
    from slimp_cli.data.holdout import choose_holdout, patient_positives
    from slimp_cli.data.shards import ShardIndex

    ids, positive = patient_positives(ShardIndex.open(shards))
    h = preset["holdout"]
    return choose_holdout(ids, positive, fraction=h["holdout"], seed=h["holdout_seed"])


def holdout_info(store: Path) -> dict:
    from slimp_cli.features.store import FeatureStore

    with FeatureStore.open(store) as st:
        split = st.split
        known = st.malignant >= 0
        held = (split == "holdout") & known if split is not None else np.zeros(st.n, bool)
        return {
            "fingerprint": st.split_fingerprint,
            "rows": int(held.sum()),
            "patients": int(len(set(st.patient_id[held]))),
            "malignant": int((st.malignant[held] == 1).sum()),
            "features": list(st.feature_names),
        }


def _budget(run: Path, shards: Path) -> dict:
    from slimp_cli.models.runs import read_config, read_metrics
    from slimp_cli.train.budget import run_budget

    cfg = read_config(run)
    metrics = read_metrics(run)
    return {
        **run_budget(run, shards),
        "steps_done": int(metrics[-1]["step"]) if metrics else 0,
        "variant": cfg["variant"],
        "kind": cfg["kind"],
        "tune": cfg.get("tune"),
        "patients_per_batch": cfg["train"]["patients_per_batch"],
        "lesions_per_patient": cfg["train"]["lesions_per_patient"],
        "images_per_batch": (cfg.get("image_baseline") or {}).get("images_per_batch"),
        "data_manifest_sha256": cfg["data"]["manifest_sha256"],
    }


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------
def needed_rows(experiments: Sequence[str]):
    """(section, row) of every section of the experiments run."""
    return [(s, r) for s in SECTIONS if s.experiment in experiments for r in s.rows]


def row_features(model: Model, row, has_patient: bool) -> tuple[str, ...]:
    """The store features a row is probed on (pseudo rows: image, the rest extrapolated)."""
    if row.features is not None:
        return row.features
    if model.stage == "pretrained":
        return ("image",) if row.pseudo is None else ("image", "lesion", "patient")
    return model_features(model.variant, has_patient)


def run_benchmark(
    sources: dict[str, Path],
    out: Path,
    *,
    preset_name: str,
    seeds: Sequence[int],
    slice3d: Path | None = None,
    slice3d_synth: int | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """Run (or resume) every stage under `out`; returns the report (also written as JSON/MD)."""
    from slimp_cli.data.shards import ShardIndex
    from slimp_cli.eval.extrapolate import extrapolate
    from slimp_cli.eval.images_add import what_images_add
    from slimp_cli.eval.multilabel import run_multilabel
    from slimp_cli.eval.probe import run_probe
    from slimp_cli.eval.retrieval import run_retrieval

    from .report import build_report, finish_report

    t_start = time.perf_counter()
    preset = PRESETS[preset_name]
    out.mkdir(parents=True, exist_ok=True)
    use_slice3d = slice3d is not None or slice3d_synth is not None
    experiments = ["scratch"] + (["slice3d"] if use_slice3d else [])
    settings = {"preset": preset_name, "seeds": list(seeds), "datasets": sorted(sources)}
    if use_slice3d:
        settings["slice3d"] = str(slice3d) if slice3d is not None else f"synth:{slice3d_synth}"
    settings_path = out / "settings.json"
    if settings_path.is_file():
        before = read_json(settings_path)
        if before != settings:
            raise SystemExit(
                f"error: {out} holds a benchmark run with other settings ({before}); "
                "use another --out"
            )
    else:
        write_json(settings_path, settings)
    if preset["torch_threads"]:
        import torch

        torch.set_num_threads(preset["torch_threads"])
    stages = Stages(out, say=lambda m: say(f"[{time.perf_counter() - t_start:7.1f}s] {m}"))
    for sub in ("shards", "runs", "stores", "results", "sources"):
        (out / sub).mkdir(exist_ok=True)
    rows = needed_rows(experiments)
    res: dict = {
        "probe": {},
        "baseline": {},
        "retrieval": {},
        "multilabel": {},
        "budget": {},
        "holdout": {},
        "models": {},  # (ds, model key) -> {"stages": [(stage name, run tags per seed)]}
        "features": {},  # (ds, model key) -> features its stores hold
        "has_patient": {},
        "sm3": None,
        "images_add": {},
    }
    # the paper preset: classifier="linear"; every probe's intervals: preset["bootstrap"]
    probe_kw = {"bootstrap": preset["bootstrap"], **preset["probe"]}

    def budget_stage(tag: str, run: Path, shards: Path, dep: str) -> None:
        path = out / "results" / f"budget-{tag}.json"
        stages.run(f"budget:{tag}", path, _save(path, lambda: _budget(run, shards)), deps=[dep])
        res["budget"][tag] = read_json(path)

    # ---- SLICE-3D pre-training (once per seed and source model) ------------------------------
    slice_runs: dict[tuple[str, int], tuple[Path, str]] = {}
    slice_shards = out / "shards" / "slice3d"
    if use_slice3d:
        src = slice3d
        if slice3d_synth is not None:
            src = out / "sources" / "slice3d"
            stages.run(
                "generate:slice3d",
                src,
                lambda: _generate_slice3d(src, slice3d_synth, preset),
            )
        stages.run(
            "ingest:slice3d",
            slice_shards,
            lambda: _ingest("slice-3d", src, slice_shards, preset),
            deps=["generate:slice3d"],
        )
        sources_needed = {
            MODELS[r.model].source: MODELS[r.model]
            for _, r in rows
            if r.model != METADATA and MODELS[r.model].experiment == "slice3d"
        }
        for source, model in sources_needed.items():
            stage = IMAGE_STAGE["slice3d"] if model.variant == "image" else "slice3d"
            for seed in seeds:
                tag = f"slice3d-{source}-s{seed}"
                run = out / "runs" / tag
                train = stage_recipe(preset, stage, seed=seed, overrides=model.train)
                stages.run(
                    f"pretrain:{tag}",
                    run,
                    lambda run=run, model=model, train=train: _pretrain(
                        slice_shards, run, dict(preset["model"], variant=model.variant), train
                    ),
                    deps=["ingest:slice3d"],
                )
                slice_runs[(source, seed)] = (run, f"pretrain:{tag}")
                budget_stage(tag, run, slice_shards, f"pretrain:{tag}")

    # ---- each target -------------------------------------------------------------------------
    for ds, source in sources.items():
        shards = out / "shards" / ds
        stages.run(
            f"ingest:{ds}",
            shards,
            lambda ds=ds, source=source, shards=shards: _ingest(
                DATASETS[ds], source, shards, preset
            ),
        )
        has_patient = ShardIndex.open(shards).schema.has_patient_features
        res["has_patient"][ds] = has_patient
        # data without patient metadata has no nested model of its own (flat is it)
        keys = {r.model for _, r in rows if r.model != METADATA}
        keys |= {m for m, _ in RETRIEVAL if MODELS[m].experiment in experiments}
        if ds == "derm7pt":
            keys |= {m for m in MULTILABEL if MODELS[m].experiment in experiments}
        models = [
            MODELS[k]
            for k in MODELS
            if k in keys
            and (
                has_patient or not (MODELS[k].stage == "scratch" and MODELS[k].variant == "nested")
            )
        ]
        mark = None
        stores: dict[tuple[str, int], tuple[Path, str]] = {}
        for model in models:
            stage_names = []
            for seed in seeds:
                tag = f"{ds}-{model.key}-s{seed}"
                store = out / "stores" / f"{tag}.h5"
                emb = f"embed:{tag}"
                if model.stage == "scratch":
                    stage = IMAGE_STAGE["scratch"] if model.variant == "image" else "scratch"
                    run = out / "runs" / tag
                    train = stage_recipe(preset, stage, seed=seed, overrides=model.train)
                    stages.run(
                        f"pretrain:{tag}",
                        run,
                        lambda shards=shards, run=run, model=model, train=train: _pretrain(
                            shards, run, dict(preset["model"], variant=model.variant), train
                        ),
                        deps=[f"ingest:{ds}"],
                    )
                    budget_stage(tag, run, shards, f"pretrain:{tag}")
                    stage_names.append([(f"pretrain on {ds}", tag)])
                    stages.run(
                        emb,
                        store,
                        lambda run=run, shards=shards, store=store: _embed(
                            run, shards, store, preset
                        ),
                        deps=[f"pretrain:{tag}"],
                    )
                elif model.stage == "adapted":
                    source_run, source_stage = slice_runs[(model.source, seed)]
                    run = out / "runs" / tag
                    train = stage_recipe(preset, "adapt", seed=seed, overrides=model.train)
                    stages.run(
                        f"adapt:{tag}",
                        run,
                        lambda src=source_run, shards=shards, run=run, train=train: _adapt(
                            src, shards, run, train, preset["stages"]["adapt"]["tune"]
                        ),
                        deps=[f"ingest:{ds}", source_stage],
                    )
                    budget_stage(tag, run, shards, f"adapt:{tag}")
                    stage_names.append(
                        [("pretrain on slice3d", source_run.name), (f"adapt on {ds}", tag)]
                    )
                    stages.run(
                        emb,
                        store,
                        lambda run=run, shards=shards, store=store: _embed(
                            run, shards, store, preset
                        ),
                        deps=[f"adapt:{tag}"],
                    )
                else:  # pretrained: the SLICE-3D model on the target, image-only
                    source_run, source_stage = slice_runs[(model.source, seed)]
                    if mark is None:
                        mark = target_holdout(shards, preset)
                    stage_names.append([("pretrain on slice3d", source_run.name)])
                    stages.run(
                        emb,
                        store,
                        lambda run=source_run, shards=shards, store=store, mark=mark: _embed(
                            run, shards, store, preset, mark=mark
                        ),
                        deps=[f"ingest:{ds}", source_stage],
                    )
                stores[(model.key, seed)] = (store, emb)
                res["holdout"].setdefault(ds, {})[tag] = holdout_info(store)
                res["features"][(ds, model.key)] = tuple(res["holdout"][ds][tag]["features"])
            res["models"][(ds, model.key)] = stage_names

        # ---- probes of every row ---------------------------------------------------------
        probes = {}
        for _, row in rows:
            if row.model == METADATA or (row.model, seeds[0]) not in stores:
                continue
            model = MODELS[row.model]
            feats = row_features(model, row, has_patient)
            have = res["features"][(ds, model.key)]
            if row.pseudo is None and not set(feats) <= set(have):
                continue  # e.g. patient features on data that has none
            probes[(model.key, "+".join(feats), row.pseudo)] = (model, feats)
        for (key, fname, pseudo), (model, feats) in probes.items():
            for seed in seeds:
                store, emb = stores[(key, seed)]
                tag = f"{ds}-{key}-s{seed}"
                deps = [emb]
                if pseudo is not None:  # Ret-SLIMP: SLICE-3D's metadata extrapolated
                    deps.append(
                        _extrapolate_stage(
                            stages,
                            out,
                            preset,
                            ds,
                            tag,
                            store,
                            emb,
                            slice_runs,
                            model,
                            seed,
                            slice_shards,
                            extrapolate,
                            pseudo,
                        )
                    )
                name = f"probe:{tag}:{fname}" + (f":{pseudo}" if pseudo else "")
                path = (
                    out
                    / "results"
                    / (f"probe-{tag}-{fname}" + (f"-{pseudo}" if pseudo else "") + ".json")
                )
                stages.run(
                    name,
                    path,
                    _save(
                        path,
                        lambda store=store, feats=feats, seed=seed, pseudo=pseudo: run_probe(
                            store,
                            label="binary",
                            features=None if pseudo else list(feats),
                            pseudo=pseudo,
                            methods=("linear", "knn"),
                            split="holdout",
                            seeds=(seed,),
                            device=preset["device"],
                            **probe_kw,
                        ),
                    ),
                    deps=deps,
                )
                res["probe"][(ds, key, seed, fname, pseudo)] = {
                    "file": str(path.relative_to(out)),
                    **read_json(path),
                }
        # ---- retrieval and Derm7pt's seven-point criteria --------------------------------
        for key, _ in RETRIEVAL:
            if (key, seeds[0]) not in stores:
                continue
            for seed in seeds:
                store, emb = stores[(key, seed)]
                tag = f"{ds}-{key}-s{seed}"
                path = out / "results" / f"retrieval-{tag}.json"
                stages.run(
                    f"retrieval:{tag}",
                    path,
                    _save(
                        path,
                        lambda store=store, seed=seed: run_retrieval(
                            store, split="holdout", seed=seed, device=preset["device"]
                        ),
                    ),
                    deps=[emb],
                )
                res["retrieval"][(ds, key, seed)] = read_json(path)
        if ds == "derm7pt":
            for key in MULTILABEL:
                if (key, seeds[0]) not in stores:
                    continue
                for seed in seeds:
                    store, emb = stores[(key, seed)]
                    tag = f"{ds}-{key}-s{seed}"
                    path = out / "results" / f"multilabel-{tag}.json"
                    stages.run(
                        f"multilabel:{tag}",
                        path,
                        _save(
                            path,
                            lambda store=store, seed=seed: run_multilabel(
                                store,
                                features=["image"],
                                methods=("linear", "knn"),
                                split="holdout",
                                seeds=(seed,),
                                device=preset["device"],
                            ),
                        ),
                        deps=[emb],
                    )
                    res["multilabel"][(ds, key, seed)] = read_json(path)
        # ---- metadata-only baselines: the raw columns of the same held-out rows ----------
        if any(r.model == METADATA for _, r in rows):
            first = next(k for k in MODELS if (k, seeds[0]) in stores)
            store, emb = stores[(first, seeds[0])]
            path = out / "results" / f"baseline-{ds}.json"
            stages.run(
                f"baseline:{ds}",
                path,
                _save(
                    path,
                    lambda store=store: run_probe(
                        store,
                        label="binary",
                        methods=(),
                        baseline=True,
                        split="holdout",
                        seeds=tuple(seeds),
                        bootstrap=preset["bootstrap"],
                    ),
                ),
                deps=[emb],
            )
            res["baseline"][ds] = {"file": str(path.relative_to(out)), **read_json(path)}
        # ---- what the images add: paired against the metadata-only model, first seed ------
        for key in IMAGES_ADD:
            if (key, seeds[0]) not in stores:
                continue
            store, emb = stores[(key, seeds[0])]
            tag = f"{ds}-{key}-s{seeds[0]}"
            path = out / "results" / f"images-add-{tag}.json"
            stages.run(
                f"images-add:{tag}",
                path,
                _save(
                    path,
                    lambda store=store: what_images_add(
                        store,
                        split="holdout",
                        seeds=(seeds[0],),
                        bootstrap=preset["bootstrap"],
                    ),
                ),
                deps=[emb],
            )
            res["images_add"][(ds, key)] = read_json(path)
        if ds == "derm7pt":  # SM3 (the second method): stage 1, then Table I's multi-label probe
            res["sm3"] = _sm3_section(out, shards, preset, seeds[0], stages, run_multilabel)
        fingerprints = {v["fingerprint"] for v in res["holdout"][ds].values()}
        if len(fingerprints) != 1:
            raise RuntimeError(f"{ds}: the stores hold out different patients: {fingerprints}")

    report = build_report(res, sources=sources, seeds=seeds, experiments=experiments)
    return finish_report(
        report,
        out,
        preset_name=preset_name,
        preset=preset,
        seeds=seeds,
        stages=stages,
        settings=settings,
        t_start=t_start,
    )


def _extrapolate_stage(
    stages, out, preset, ds, tag, store, emb, slice_runs, model, seed, slice_shards, fn, pseudo
) -> str:
    """Embed SLICE-3D with its own nested run (the reference, once per seed) and extrapolate
    its metadata onto the target's image-only store; returns the stage name."""
    source_run, source_stage = slice_runs[(model.source, seed)]
    ref_tag = f"slice3d-{model.source}-s{seed}"
    ref = out / "stores" / f"{ref_tag}.h5"
    stages.run(
        f"embed:{ref_tag}",
        ref,
        lambda: _embed(source_run, slice_shards, ref, preset),
        deps=[source_stage],
    )
    name = f"extrapolate:{tag}:{pseudo}"
    path = out / "results" / f"extrapolate-{tag}-{pseudo}.json"
    stages.run(
        name,
        path,
        _save(path, lambda: fn(ref, store, strategy=pseudo, device=preset["device"])),
        deps=[emb, f"embed:{ref_tag}"],
    )
    return name


def _sm3_section(out: Path, shards: Path, preset: dict, seed: int, stages, run_multilabel) -> dict:
    """SM3 stage 1 on Derm7pt (one pre-training seed), embedded, and the seven-point probe in
    the SM3 paper's Table I layout (the cpu preset on the held-out cases, the paper preset on
    Kawahara's official test split). The shared Derm7pt subset has no clinical images, so only
    the dermoscopic branch learns (the run says so)."""
    from slimp_cli.features.embed import embed
    from slimp_cli.train import pretrain

    tag = f"derm7pt-sm3-s{seed}"
    run, store = out / "runs" / tag, out / "stores" / f"{tag}.h5"
    path = out / "results" / f"multilabel-{tag}.json"

    def train() -> None:
        pretrain(
            shards,
            run,
            model=preset["sm3_model"],
            train=dict(preset["sm3_train"], seed=seed),
            resume=_fresh(run),
        )

    stages.run(f"pretrain:{tag}", run, train, deps=["ingest:derm7pt"])
    stages.run(
        f"embed:{tag}",
        store,
        lambda: embed(
            run,
            shards,
            store,
            batch_size=preset["embed_batch"],
            device=preset["device"],
            overwrite=True,
        ),
        deps=[f"pretrain:{tag}"],
    )
    stages.run(
        f"multilabel:{tag}",
        path,
        _save(
            path,
            lambda: run_multilabel(
                store,
                features=["image"],
                methods=("linear",),
                seeds=(seed,),
                device=preset["device"],
                **preset["sm3_probe"],  # the paper preset: split="official"
            ),
        ),
        deps=[f"embed:{tag}"],
    )
    return read_json(path)
