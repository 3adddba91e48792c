"""The paper's Table 3 / Table 6 / Table 18 layouts from raw dataset folders, in one command.

    python benchmarks/paper_tables.py --pad DIR --derm7pt DIR --preset cpu|paper --out DIR

Stages (library calls, no subprocesses): ingest -> pre-train nested, flat and image-only
(SimCLR) from scratch, once per seed -> embed -> linear and kNN probes on the patients held out
of pre-training -> the metadata-only baselines on the same rows (`probe --baseline`) -> Table 6's
feature ablation (image / image+lesion / image+lesion+patient) -> image<->metadata retrieval ->
on Derm7pt the seven-point multi-label probe. Derm7pt has no patient metadata, so its "nested"
model is the flat one (as `slimp pretrain` does).

Seeds: `--seeds 0,1,2` are *pre-training* seeds (weights, batches, augmentation); the held-out
patients are the same for every run (`holdout_seed` fixed), so every model and the metadata-only
baselines are scored on the same rows. With a fixed split the probes are deterministic, so the
pre-training seed is what the "± std" measures (the baselines' std is over their own seeds).

Prints one table with the paper's published figures in adjacent columns and writes
`paper_tables.json` + `paper_tables.md` (machine, versions, git commit, wall time). Resumes:
every stage writes its output atomically and then a record under `stages/`; a second
invocation skips each stage whose record and output exist (and whose inputs were not
recomputed in this invocation), and an interrupted pre-training continues from its last
checkpoint. `stages.jsonl` logs each stage of each invocation as computed or skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from slimp_cli.paths import read_json, write_json  # noqa: E402

# ------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # A CI smoke test: minutes on 2 CPU cores. A 2-block ViT (width 64) on 32 px images, a few
    # epochs, 20% of the patients held out (more held-out rows than 10% on subsets this small).
    "cpu": {
        "image_size": 32,
        "model": dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32, tab_layers=2),
        "train": dict(
            patients_per_batch=16,
            lesions_per_patient=4,
            epochs=3,
            lr=1e-3,
            warmup_steps=5,
            holdout=0.2,
            holdout_seed=0,
            device="cpu",
            workers=0,
            log_every=50,
        ),
        "embed_batch": 128,
        "device": "cpu",
        "torch_threads": 1,
        "ingest_workers": 2,
        # SM3 (Derm7pt, one pre-training seed): the tiny local CNN, a few epochs
        "sm3_model": dict(image_model="resnet_test", img_size=32, proj_dim=16, label_dim=32),
        "sm3_train": dict(
            method="sm3",
            patients_per_batch=32,
            epochs=2,
            lr=1e-3,
            warmup_steps=2,
            holdout=0.2,
            holdout_seed=0,
            device="cpu",
            workers=0,
            log_every=50,
        ),
    },
    # The paper's recipe (Sec. 4.1, App. D) for a GPU: ViT-S/16 at 224 px, B = 4 patients,
    # N = 100 lesions, AdamW lr 1e-4, 150 epochs. Table 3 ("trained on each dataset from
    # scratch") states no other recipe, so the pre-training one is used. 2 TRACE layers give
    # Table 9's parameter counts (docs/method.md); 10% of the patients held out (the paper's
    # 90/10 validation split).
    "paper": {
        "image_size": 256,
        "model": dict(image_model="vit_small_patch16_224", img_size=224, tab_layers=2),
        "train": dict(
            patients_per_batch=4,
            lesions_per_patient=100,
            epochs=150,
            lr=1e-4,
            holdout=0.1,
            holdout_seed=0,
            device="auto",
            workers=8,
        ),
        "embed_batch": 256,
        "device": "auto",
        "torch_threads": None,
        "ingest_workers": 8,
        # SM3's own paper settings (stage 1: resnet50, batch 96, lr 1e-6, 400 epochs; sm3_paper)
        "sm3_model": dict(image_model="resnet50", img_size=224),
        "sm3_train": dict(method="sm3", holdout=0.1, holdout_seed=0, device="auto", workers=8),
    },
}

DATASETS = {"pad": "pad-ufes-20", "derm7pt": "derm7pt"}
DATASET_NAMES = {"pad": "PAD-UFES-20", "derm7pt": "Derm7pt"}
VARIANTS = ("nested", "flat", "image")
MODEL_NAMES = {"nested": "SLIMP nested", "flat": "SLIMP flat", "image": "image-only (SimCLR)"}
ABLATION = (("image",), ("image", "lesion"), ("image", "lesion", "patient"))
METRICS = ("accuracy", "balanced_accuracy", "f1", "auc")
RETRIEVAL_METRICS = ("R@1", "R@5", "R@10", "mAP")

# The paper's published figures on PAD-UFES-20 (percent for Acc/BA/R@k/mAP, fractions for F1
# and AUC, as printed). Keys: (section, variant, features, method).
T6 = "Table 6 (SLIMP B=4, SLICE-3D + continual)"
PAPER: dict[tuple, dict] = {
    # Table 3: trained on PAD-UFES-20 from scratch, linear probe
    ("table3", "nested", "image+lesion+patient", "linear"): dict(
        accuracy=87.4, balanced_accuracy=86.9, auc=0.910, source="Table 3"
    ),
    ("table3", "flat", "image+lesion", "linear"): dict(
        accuracy=85.2, balanced_accuracy=84.7, auc=0.902, source="Table 3"
    ),
    ("table3", "image", "image", "linear"): dict(
        accuracy=70.4,
        balanced_accuracy=70.5,
        auc=0.766,
        source="Table 2 (SimCLR pre-trained on SLICE-3D)",
    ),
    # Table 18: kNN accuracy (models continually pre-trained from SLICE-3D)
    ("table18", "nested", "image+lesion+patient", "knn"): dict(
        accuracy=93.5, source="Table 18 (SLIMP B=4, SLICE-3D + continual)"
    ),
    ("table18", "flat", "image+lesion", "knn"): dict(
        accuracy=81.3, source="Table 18 (SLIMP flat, SLICE-3D + continual)"
    ),
    ("table18", "image", "image", "knn"): dict(
        accuracy=67.4, source="Table 18 (SimCLR on SLICE-3D)"
    ),
    # Table 6: encoder-output ablation (SLIMP B=4: SLICE-3D + continual pre-training)
    ("table6", "nested", "image", "linear"): dict(
        accuracy=76.1, balanced_accuracy=75.5, f1=0.764, auc=0.807, source=T6
    ),
    ("table6", "nested", "image+lesion", "linear"): dict(
        accuracy=89.6, balanced_accuracy=89.1, f1=0.908, auc=0.908, source=T6
    ),
    ("table6", "nested", "image+lesion+patient", "linear"): dict(
        accuracy=90.9, balanced_accuracy=90.2, f1=0.921, auc=0.926, source=T6
    ),
    ("table6", "nested", "image", "knn"): dict(
        accuracy=74.8, balanced_accuracy=74.6, f1=0.770, auc=0.633, source=T6
    ),
    ("table6", "nested", "image+lesion", "knn"): dict(
        accuracy=90.0, balanced_accuracy=89.7, f1=0.911, auc=0.865, source=T6
    ),
    ("table6", "nested", "image+lesion+patient", "knn"): dict(
        accuracy=93.5, balanced_accuracy=93.2, f1=0.942, auc=0.911, source=T6
    ),
    # Tables 20 / 21: instance-level image <-> metadata retrieval, SLIMP ViT-S, PAD-UFES-20
    ("retrieval", "nested", "image_to_lesion"): {
        "R@5": 9.0,
        "R@10": 14.8,
        "mAP": 7.9,
        "source": "Table 20",
    },
    ("retrieval", "nested", "lesion_to_image"): {
        "R@5": 8.7,
        "R@10": 16.1,
        "mAP": 7.6,
        "source": "Table 21",
    },
}


# ------------------------------------------------------------------------------------------
# resumable stages
# ------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class Stages:
    """Run named stages once: a stage whose record (`stages/<name>.json`) and output exist is
    skipped, unless one of its dependencies was recomputed in this invocation."""

    out: Path
    say: Callable[[str], None]
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    recomputed: set[str] = field(default_factory=set)
    computed_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {"computed": 0, "skipped": 0})

    def __post_init__(self) -> None:
        (self.out / "stages").mkdir(parents=True, exist_ok=True)

    def record_path(self, name: str) -> Path:
        return self.out / "stages" / f"{_safe(name)}.json"

    def run(self, name: str, output: Path, fn: Callable[[], None], deps: Sequence[str] = ()):
        record = self.record_path(name)
        stale = sorted(set(deps) & self.recomputed)
        if record.is_file() and output.exists() and not stale:
            self._log(name, "skipped", 0.0, output)
            self.counts["skipped"] += 1
            return
        why = f" (input {stale[0]} recomputed)" if stale else ""
        self.say(f"{name}{why}")
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        if not output.exists():
            raise RuntimeError(f"stage {name} finished without writing {output}")
        write_json(
            record,
            {
                "stage": name,
                "output": str(output.relative_to(self.out)),
                "deps": list(deps),
                "seconds": round(seconds, 2),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "invocation": self.invocation,
            },
        )
        self.recomputed.add(name)
        self.computed_seconds += seconds
        self.counts["computed"] += 1
        self._log(name, "computed", seconds, output)

    def total_seconds(self) -> float:
        """Compute time of every finished stage, whichever invocation ran it."""
        return sum(
            float(read_json(p).get("seconds", 0.0)) for p in (self.out / "stages").glob("*.json")
        )

    def _log(self, name: str, action: str, seconds: float, output: Path) -> None:
        line = {
            "invocation": self.invocation,
            "stage": name,
            "action": action,
            "seconds": round(seconds, 2),
            "output": str(output.relative_to(self.out)),
        }
        with open(self.out / "stages.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------------------
# the stages themselves (library calls)
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


def _pretrain(shards: Path, run: Path, variant: str, seed: int, preset: dict) -> None:
    from slimp_cli.train import pretrain

    # an interrupted run continues from its last checkpoint; a run dir without one restarts
    resume = (run / "checkpoint-last.pt").is_file()
    if run.exists() and not resume:
        shutil.rmtree(run)
    pretrain(
        shards,
        run,
        model=dict(preset["model"], variant=variant),
        train=dict(preset["train"], seed=seed),
        resume=resume,
    )


def _embed(run: Path, shards: Path, store: Path, preset: dict) -> None:
    from slimp_cli.embed import embed

    embed(run, shards, store, batch_size=preset["embed_batch"], device=preset["device"])


def _save(path: Path, fn: Callable[[], dict]) -> Callable[[], None]:
    return lambda: write_json(path, fn())


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------
def variants_for(ds: str, shards: Path) -> list[str]:
    """nested, flat, image; data without patient metadata has no nested model (flat is it)."""
    from slimp_cli.shards import ShardIndex

    has_patient = ShardIndex.open(shards).schema.has_patient_features
    return [v for v in VARIANTS if has_patient or v != "nested"]


def run_benchmark(
    sources: dict[str, Path],
    out: Path,
    *,
    preset_name: str,
    seeds: Sequence[int],
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """Run (or resume) every stage under `out`; returns the report (also written as JSON/MD)."""
    from slimp_cli.eval.multilabel import run_multilabel
    from slimp_cli.eval.probe import run_probe
    from slimp_cli.eval.retrieval import run_retrieval

    t_start = time.perf_counter()
    preset = PRESETS[preset_name]
    out.mkdir(parents=True, exist_ok=True)
    settings = {"preset": preset_name, "seeds": list(seeds), "datasets": sorted(sources)}
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
    for sub in ("shards", "runs", "stores", "results"):
        (out / sub).mkdir(exist_ok=True)
    results: dict = {"probe": {}, "baseline": {}, "retrieval": {}, "multilabel": {}, "sm3": None}
    holdout_rows: dict[str, dict] = {}

    for ds, source in sources.items():
        shards = out / "shards" / ds
        stages.run(
            f"ingest:{ds}",
            shards,
            lambda ds=ds, source=source, shards=shards: _ingest(
                DATASETS[ds], source, shards, preset
            ),
        )
        variants = variants_for(ds, shards)
        for variant in variants:
            for seed in seeds:
                tag = f"{ds}-{variant}-s{seed}"
                run, store = out / "runs" / tag, out / "stores" / f"{tag}.h5"
                pre, emb = f"pretrain:{tag}", f"embed:{tag}"
                stages.run(
                    pre,
                    run,
                    lambda shards=shards, run=run, variant=variant, seed=seed: _pretrain(
                        shards, run, variant, seed, preset
                    ),
                    deps=[f"ingest:{ds}"],
                )
                stages.run(
                    emb,
                    store,
                    lambda run=run, shards=shards, store=store: _embed(run, shards, store, preset),
                    deps=[pre],
                )
                feature_sets = ABLATION if variant == "nested" else [_all_features(variant)]
                for feats in feature_sets:
                    name = f"probe:{tag}:{'+'.join(feats)}"
                    path = out / "results" / f"probe-{tag}-{'+'.join(feats)}.json"
                    stages.run(
                        name,
                        path,
                        _save(
                            path,
                            lambda store=store, feats=feats, seed=seed: run_probe(
                                store,
                                label="binary",
                                features=list(feats),
                                methods=("linear", "knn"),
                                split="holdout",
                                seeds=(seed,),
                                device=preset["device"],
                            ),
                        ),
                        deps=[emb],
                    )
                    results["probe"][(ds, variant, seed, "+".join(feats))] = read_json(path)
                if variant != "image":
                    name, path = f"retrieval:{tag}", out / "results" / f"retrieval-{tag}.json"
                    stages.run(
                        name,
                        path,
                        _save(
                            path,
                            lambda store=store, seed=seed: run_retrieval(
                                store, split="holdout", seed=seed, device=preset["device"]
                            ),
                        ),
                        deps=[emb],
                    )
                    results["retrieval"][(ds, variant, seed)] = read_json(path)
                if ds == "derm7pt":
                    name, path = f"multilabel:{tag}", out / "results" / f"multilabel-{tag}.json"
                    stages.run(
                        name,
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
                    results["multilabel"][(ds, variant, seed)] = read_json(path)
                holdout_rows.setdefault(ds, {})[tag] = _holdout_info(store)
        # metadata-only baselines: the raw columns of the same held-out rows
        first = f"{ds}-{variants[0]}-s{seeds[0]}"
        path = out / "results" / f"baseline-{ds}.json"
        stages.run(
            f"baseline:{ds}",
            path,
            _save(
                path,
                lambda first=first: run_probe(
                    out / "stores" / f"{first}.h5",
                    label="binary",
                    methods=(),
                    baseline=True,
                    split="holdout",
                    seeds=tuple(seeds),
                ),
            ),
            deps=[f"embed:{first}"],
        )
        results["baseline"][ds] = read_json(path)
        if ds == "derm7pt":  # SM3 (the second method): stage 1, then Table I's multi-label probe
            results["sm3"] = _sm3_section(out, shards, preset, seeds[0], stages, run_multilabel)
        fingerprints = {v["fingerprint"] for v in holdout_rows[ds].values()}
        if len(fingerprints) != 1:
            raise RuntimeError(f"{ds}: the runs hold out different patients: {fingerprints}")

    report = build_report(results, holdout_rows, sources=sources, seeds=seeds)
    report["sm3"] = results["sm3"]["table"] if results["sm3"] else None
    report["run"] = {
        "preset": preset_name,
        "preset_settings": preset,
        "seeds": list(seeds),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
        "wall_seconds_this_invocation": round(time.perf_counter() - t_start, 1),
        "compute_seconds_all_stages": round(stages.total_seconds(), 1),
        "stages_this_invocation": dict(stages.counts),
        "invocation": stages.invocation,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }
    write_json(out / "paper_tables.json", report)
    md = to_markdown(report)
    from slimp_cli.paths import atomic_path

    with atomic_path(out / "paper_tables.md") as tmp:
        tmp.write_text(md)
    return report


def _sm3_section(out: Path, shards: Path, preset: dict, seed: int, stages, run_multilabel) -> dict:
    """SM3 stage 1 on Derm7pt (one pre-training seed), embedded, and the seven-point probe in
    the SM3 paper's Table I layout on the held-out cases. The shared Derm7pt subset has no
    clinical images, so only the dermoscopic branch learns (the run says so)."""
    from slimp_cli.embed import embed
    from slimp_cli.train import pretrain

    tag = f"derm7pt-sm3-s{seed}"
    run, store = out / "runs" / tag, out / "stores" / f"{tag}.h5"
    path = out / "results" / f"multilabel-{tag}.json"

    def train() -> None:
        resume = (run / "checkpoint-last.pt").is_file()  # an interrupted run continues
        pretrain(
            shards,
            run,
            model=preset["sm3_model"],
            train=dict(preset["sm3_train"], seed=seed),
            resume=resume,
        )

    stages.run(f"pretrain:{tag}", run, train, deps=["ingest:derm7pt"])
    stages.run(
        f"embed:{tag}",
        store,
        lambda: embed(
            run, shards, store, batch_size=preset["embed_batch"], device=preset["device"]
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
                split="holdout",
                seeds=(seed,),
                device=preset["device"],
            ),
        ),
        deps=[f"embed:{tag}"],
    )
    return read_json(path)


def _all_features(variant: str) -> tuple[str, ...]:
    return {"nested": ("image", "lesion", "patient"), "flat": ("image", "lesion")}.get(
        variant, ("image",)
    )


def _holdout_info(store: Path) -> dict:
    from slimp_cli.store import FeatureStore

    with FeatureStore.open(store) as st:
        split = st.split
        known = st.malignant >= 0
        held = (split == "holdout") & known if split is not None else np.zeros(st.n, bool)
        return {
            "fingerprint": st.split_fingerprint,
            "rows": int(held.sum()),
            "patients": int(len(set(st.patient_id[held]))),
            "malignant": int((st.malignant[held] == 1).sum()),
        }


# ------------------------------------------------------------------------------------------
# aggregation and tables
# ------------------------------------------------------------------------------------------
def _over_seeds(values: list[float | None]) -> dict:
    vals = np.array([v for v in values if v is not None], dtype=float)
    if not len(vals):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(vals.mean()), "std": float(vals.std()), "n": int(len(vals))}


def _probe_metrics(reports: list[dict], method: str) -> dict:
    """Mean ± std over pre-training seeds of each metric of `method` (one probe per seed)."""
    per_seed = []
    for rep in reports:
        row = next(r for r in rep["results"] if r["method"] == method and r["low_shot"] is None)
        per_seed.append({m: (row["metrics"].get(m) or {}).get("mean") for m in METRICS})
    return {m: _over_seeds([s[m] for s in per_seed]) for m in METRICS}


def build_report(results: dict, holdout_rows: dict, *, sources: dict, seeds: Sequence[int]):
    rows = []
    datasets = [ds for ds in DATASETS if ds in sources]
    for ds in datasets:
        variants = sorted({v for (d, v, _, _) in results["probe"] if d == ds}, key=VARIANTS.index)
        held = next(iter(holdout_rows[ds].values()))
        for method, section in (("linear", "table3"), ("knn", "table18")):
            for variant in variants:
                feats = "+".join(_all_features(variant))
                reps = [results["probe"][(ds, variant, s, feats)] for s in seeds]
                rows.append(
                    _row(ds, section, MODEL_NAMES[variant], variant, feats, method, reps, held)
                )
            if method == "linear":
                base = results["baseline"][ds]
                for r in base["results"]:
                    rows.append(
                        {
                            "dataset": ds,
                            "section": "table3",
                            "model": "metadata only (raw columns)",
                            "variant": "metadata",
                            "features": "raw metadata",
                            "method": r["method"],
                            "split": r["split"],
                            "test_rows": held["rows"],
                            "seeds_over": "classifier seeds (fixed split)",
                            "metrics": {
                                m: dict(r["metrics"].get(m) or {}, n=len(r["seeds"]))
                                for m in METRICS
                            },
                            "paper": None,
                        }
                    )
        if "nested" in variants:
            for method in ("linear", "knn"):
                for feats in ABLATION:
                    f = "+".join(feats)
                    reps = [results["probe"][(ds, "nested", s, f)] for s in seeds]
                    rows.append(
                        _row(ds, "table6", MODEL_NAMES["nested"], "nested", f, method, reps, held)
                    )
    retrieval = []
    for ds in datasets:
        for variant in ("nested", "flat"):
            reps = [results["retrieval"].get((ds, variant, s)) for s in seeds]
            if not all(reps):
                continue
            for task in ("image_to_lesion", "lesion_to_image"):
                paper = PAPER.get(("retrieval", variant, task)) if ds == "pad" else None
                retrieval.append(
                    {
                        "dataset": ds,
                        "model": MODEL_NAMES[variant],
                        "task": task,
                        "queries": reps[0]["n_queries"],
                        "metrics": {
                            m: _over_seeds([r[task].get(m) for r in reps])
                            for m in RETRIEVAL_METRICS
                        },
                        "paper": paper,
                    }
                )
    multilabel = []
    for ds in datasets:
        for variant in VARIANTS:
            reps = [results["multilabel"].get((ds, variant, s)) for s in seeds]
            if not all(reps):
                continue
            targets = [r["target"] for r in reps[0]["results"] if r["method"] == "linear"]
            for target in targets:
                for method in ("linear", "knn"):
                    vals = []
                    for rep in reps:
                        row = next(
                            r
                            for r in rep["results"]
                            if r["method"] == method and r["target"] == target
                        )
                        vals.append(row["metrics"])
                    multilabel.append(
                        {
                            "dataset": ds,
                            "model": MODEL_NAMES[variant],
                            "criterion": target,
                            "method": method,
                            "features": "image",
                            "metrics": {
                                m: _over_seeds([(v.get(m) or {}).get("mean") for v in vals])
                                for m in ("accuracy", "balanced_accuracy", "f1_macro", "auc")
                            },
                        }
                    )
    warnings = sorted(
        {
            f"{ds}: {w}"
            for kind in ("probe", "retrieval", "multilabel")
            for key, rep in results[kind].items()
            for ds in [key[0]]
            for w in rep.get("warnings", [])
        }
        | {f"{ds}: {w}" for ds, rep in results["baseline"].items() for w in rep["warnings"]}
    )
    return {
        "format": "slimp-paper-tables",
        "version": 1,
        "classification": rows,
        "retrieval": retrieval,
        "multilabel": multilabel,
        "holdout": {ds: next(iter(v.values())) for ds, v in holdout_rows.items()},
        "warnings": warnings,
    }


def _row(ds, section, model, variant, feats, method, reps, held) -> dict:
    return {
        "dataset": ds,
        "section": section,
        "model": model,
        "variant": variant,
        "features": feats,
        "method": method,
        "split": reps[0]["split"]["kind"],
        "test_rows": held["rows"],
        "seeds_over": "pre-training seeds",
        "metrics": _probe_metrics(reps, method),
        "paper": PAPER.get((section, variant, feats, method)) if ds == "pad" else None,
    }


SECTION_TITLES = {
    "table3": "Table 3 layout: from scratch, linear probe (metadata-only rows: raw columns)",
    "table18": "Table 18 layout: kNN (k = 20)",
    "table6": "Table 6 layout: feature ablation of the nested model",
}


def _pct(metric: str) -> bool:
    return metric in ("accuracy", "balanced_accuracy")


def fmt_metric(metric: str, value: dict | None) -> str:
    """Acc/BA as percent (one decimal), F1/AUC as fractions (three), mean ± std."""
    if not value or value.get("mean") is None:
        return "—"
    scale, digits = (100.0, 1) if _pct(metric) else (1.0, 3)
    text = f"{value['mean'] * scale:.{digits}f}"
    if value.get("std") is not None and value.get("n", 0) > 1:
        text += f" ± {value['std'] * scale:.{digits}f}"
    return text


def fmt_paper(metric: str, paper: dict | None) -> str:
    if not paper or paper.get(metric) is None:
        return "—"
    v = paper[metric]
    return f"{v:.1f}" if _pct(metric) or metric.startswith(("R@", "mAP")) else f"{v:.3f}"


def fmt_retrieval(value: dict) -> str:
    if value.get("mean") is None:
        return "—"
    text = f"{value['mean'] * 100:.1f}"
    if value.get("n", 0) > 1:
        text += f" ± {value['std'] * 100:.1f}"
    return text


def classification_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = [
        "dataset",
        "layout",
        "model",
        "features",
        "method",
        "Acc",
        "Acc paper",
        "BA",
        "BA paper",
        "F1",
        "F1 paper",
        "AUC",
        "AUC paper",
        "paper source",
    ]
    body = []
    for r in rows:
        cells = [
            DATASET_NAMES[r["dataset"]],
            r["section"].replace("table", "T"),
            r["model"],
            r["features"],
            r["method"],
        ]
        for m in METRICS:
            cells += [fmt_metric(m, r["metrics"].get(m)), fmt_paper(m, r["paper"])]
        cells.append((r["paper"] or {}).get("source", "—"))
        body.append(cells)
    return head, body


def retrieval_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "model", "task", "queries"]
    for m in RETRIEVAL_METRICS:
        head += [m, f"{m} paper"]
    head.append("paper source")
    body = []
    for r in rows:
        cells = [DATASET_NAMES[r["dataset"]], r["model"], r["task"], str(r["queries"])]
        for m in RETRIEVAL_METRICS:
            cells += [fmt_retrieval(r["metrics"][m]), fmt_paper(m, r["paper"])]
        cells.append((r["paper"] or {}).get("source", "—"))
        body.append(cells)
    return head, body


def multilabel_table(
    rows: list[dict], *, criteria: bool = False
) -> tuple[list[str], list[list[str]]]:
    """The mean over the seven criteria (`criteria=True`: every criterion too)."""
    head = ["dataset", "model", "criterion", "method", "Acc", "BA", "F1-macro", "AUC"]
    body = []
    for r in rows:
        if not criteria and r["criterion"] != "mean":
            continue
        m = r["metrics"]
        body.append(
            [
                DATASET_NAMES[r["dataset"]],
                r["model"],
                r["criterion"],
                r["method"],
                fmt_metric("accuracy", m["accuracy"]),
                fmt_metric("balanced_accuracy", m["balanced_accuracy"]),
                fmt_metric("f1", m["f1_macro"]),
                fmt_metric("auc", m["auc"]),
            ]
        )
    return head, body


def md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    run = report["run"]
    held = "; ".join(
        f"{DATASET_NAMES[ds]}: {h['rows']} images of {h['patients']} held-out patients "
        f"({h['malignant']} malignant), holdout {h['fingerprint']}"
        for ds, h in report["holdout"].items()
    )
    parts = [
        f"Preset `{run['preset']}`, pre-training seeds {run['seeds']}; {held}.",
        "Every number is on patients held out of pre-training (`--split holdout`); mean ± std "
        "over pre-training seeds (metadata-only rows: over the classifier's seeds; the logistic "
        "regression is deterministic). Acc and BA in %, F1 and AUC as fractions, as the paper "
        "prints them. The paper's figures come from ViT-S models trained for 150 epochs on the "
        "full datasets (Table 3: from scratch; Tables 6 and 18: SLICE-3D pre-training + "
        "continual pre-training) and a random 90/10 split: they are a reference, not the same "
        "experiment.",
        "",
        md_table(*classification_table(report["classification"])),
        "",
        "Image <-> metadata retrieval on the held-out images (%, ties count half):",
        "",
        md_table(*retrieval_table(report["retrieval"])),
    ]
    if report["multilabel"]:
        parts += [
            "",
            "Derm7pt seven-point criteria from image features: one multiclass probe per "
            "criterion, the mean over the seven criteria of each metric (per criterion in "
            "`paper_tables.json`):",
            "",
            md_table(*multilabel_table(report["multilabel"])),
        ]
    if report.get("sm3"):
        table = report["sm3"]["linear"]
        head = [
            "SM3 stage 1 (linear)",
            *[f"{c} ({k})" if k else c for c, k in zip(table["columns"], table["classes"])],
        ]
        body = [  # Table I's row order (JSON files sort keys)
            [row, *["n/a" if v is None else f"{v:.3f}" for v in table[row]]]
            for row in ("AUC", "Sens.", "Spec.", "Prec.")
            if row in table
        ]
        parts += [
            "",
            "SM3 (the second method, `pretrain --method sm3`, stage 1) on Derm7pt, the SM3 "
            "paper's Table I layout (AUC, sensitivity, specificity, precision of the reported "
            "class of each criterion), linear probe on the held-out cases, one pre-training seed. "
            "The shared subset has no clinical images: only the dermoscopic branch learns.",
            "",
            md_table(head, body),
        ]
    parts += [
        "",
        f"Machine: {run['machine']['summary']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        + f". Commit {run['git']['commit']}{' (uncommitted changes)' if run['git']['dirty'] else ''}. "
        f"Compute time of all stages {run['compute_seconds_all_stages']:.0f} s; this invocation "
        f"{run['wall_seconds_this_invocation']:.0f} s ({run['stages_this_invocation']['computed']} "
        f"stages computed, {run['stages_this_invocation']['skipped']} skipped).",
    ]
    return "\n".join(parts) + "\n"


def print_tables(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=240)

    def show(title: str, head: list[str], body: list[list[str]], caption: str | None = None):
        t = Table(title=title, caption=caption)
        for h in head:
            t.add_column(h, justify="right" if h[0].isupper() or h.endswith("paper") else "left")
        for row in body:
            t.add_row(*row)
        console.print(t)

    held = ", ".join(
        f"{DATASET_NAMES[ds]} {h['rows']} held-out images" for ds, h in report["holdout"].items()
    )
    show(
        "slimp vs the paper: benign vs malignant on held-out patients",
        *classification_table(report["classification"]),
        caption=f"{held}; mean ± std over pre-training seeds {report['run']['seeds']}; "
        "Acc/BA %, F1/AUC fractions",
    )
    show("image <-> metadata retrieval (%)", *retrieval_table(report["retrieval"]))
    if report["multilabel"]:
        show(
            "Derm7pt seven-point criteria (image features)", *multilabel_table(report["multilabel"])
        )


# ------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------
def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["memory_gb"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (ValueError, OSError, AttributeError):
        info["memory_gb"] = None
    info["summary"] = (
        f"{info['cpu_count']} CPU cores ({info['processor']}), "
        f"{info['memory_gb']} GB RAM, GPU: {info['gpu'] or 'none'}, {platform.system()}"
    )
    return info


def versions() -> dict:
    import sklearn
    import timm
    import torch

    import slimp_cli

    return {
        "slimp": getattr(slimp_cli, "__version__", "?"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD") or None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad", type=Path, help="PAD-UFES-20 folder (metadata.csv + images)")
    ap.add_argument("--derm7pt", type=Path, help="Derm7pt folder (meta.csv + images/)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--out", type=Path, required=True, help="working folder (resumable)")
    ap.add_argument(
        "--seeds", default="0,1,2", help="pre-training seeds, comma-separated (default 0,1,2)"
    )
    args = ap.parse_args(argv)
    sources = {k: getattr(args, k) for k in DATASETS if getattr(args, k) is not None}
    if not sources:
        ap.error("give --pad and/or --derm7pt")
    for name, path in sources.items():
        if not path.is_dir():
            print(f"error: --{name} {path}: no such folder", file=sys.stderr)
            return 1
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: comma-separated integers")
    if not seeds:
        ap.error("--seeds: give at least one seed")
    from slimp_cli.errors import SlimpError

    try:
        report = run_benchmark(sources, args.out, preset_name=args.preset, seeds=seeds)
    except SlimpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_tables(report)
    print(
        f"wrote {args.out / 'paper_tables.json'} and {args.out / 'paper_tables.md'} "
        f"({report['run']['wall_seconds_this_invocation']:.0f} s this invocation)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
