"""`slimp demo`: the whole pipeline on generated cohorts, on a CPU, in minutes.

Two cohorts are generated: a reference cohort with full metadata and a smaller target cohort
treated as image-only. The demo pre-trains a tiny nested SLIMP model and a tiny image-only
SimCLR model on the reference, embeds, probes both (plus the metadata-only baseline), then
gives the image-only target pseudo-metadata by retrieval (I->L->P) and probes it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..core.errors import SlimpError
from ..data.shards import ShardIndex
from ..eval.extrapolate import extrapolate
from ..eval.probe import run_probe
from ..eval.retrieval import run_retrieval
from ..features.embed import embed
from ..ingest import ingest
from ..ingest.synth import generate_cohort
from ..models.config import ModelConfig
from ..train import TrainConfig, pretrain

# Tiny models so the demo runs on a 2-core laptop: a 4-block ViT of width 96 on 48 px images.
DEMO_IMAGE_MODEL = "vit_demo"
DEMO_IMG_SIZE = 48


# A fifth of the patients is held out of pre-training: enough held-out rows for stable numbers
# on a cohort of a few hundred patients (the tool's default is 10%).
DEMO_HOLDOUT = 0.2
# Fixed, not "all cores": the thread count changes float summation order, hence the numbers.
DEMO_THREADS = 2


def _train_config(steps: int, seed: int, *, variant: str, index) -> TrainConfig:
    # nested: 32 patients x up to 6 lesions; SimCLR: 8 x 6 = 48 random images per step
    batch, per = (32, 6) if variant != "image" else (8, 6)
    trained = (1 - DEMO_HOLDOUT) * len(index)
    units = (
        trained
        if variant != "image"
        else trained * index.manifest["counts"]["lesions"] / len(index)
    )
    steps_per_epoch = max(1, int(units) // (batch * (1 if variant != "image" else per)))
    return TrainConfig(
        patients_per_batch=batch,
        lesions_per_patient=per,
        holdout=DEMO_HOLDOUT,
        epochs=-(-steps // steps_per_epoch),  # enough epochs for `steps`: the cosine decays to ~0
        max_steps=steps,
        lr=1e-3,  # tiny models from scratch learn faster with a larger rate than the paper's 1e-4
        warmup_steps=max(1, steps // 10),
        seed=seed,
        device="cpu",
        workers=0,
        augment=variant == "image",
    )


def run_demo(
    out: str | Path,
    *,
    patients: int = 250,
    steps: int = 100,
    seed: int = 0,
    threads: int = DEMO_THREADS,
    console: Console | None = None,
) -> dict:
    """Run the demo under `out`; print a results table; return the results (also demo.json).

    The numbers are bit-identical from run to run for one `threads`, torch build and CPU
    instruction set (all three are in demo.json): the thread count sets how float sums are split,
    so another count moves the third decimal.
    """
    import torch

    if threads < 1:
        raise SlimpError(f"--threads must be >= 1 (got {threads})")
    console = console or Console(stderr=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo(out, patients=patients, steps=steps, seed=seed, console=console)
    finally:
        torch.set_num_threads(previous_threads)


def reproducibility() -> dict:
    """What the demo's numbers depend on besides its options (recorded in demo.json)."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _run_demo(out, *, patients: int, steps: int, seed: int, console: Console) -> dict:
    stdout = Console(width=max(Console().width, 118))  # results to stdout, never wrapped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda msg: console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {msg}")  # noqa: E731

    log(f"generating a {patients}-patient reference cohort and an image-only target cohort")
    generate_cohort(out / "cohort", patients=patients, seed=seed, image_size=64)
    generate_cohort(
        out / "target-cohort", patients=max(40, patients // 3), seed=seed + 1, image_size=64
    )
    log("ingesting both into shards")
    ingest("synth", out / "cohort", out / "shards", image_size=DEMO_IMG_SIZE, overwrite=True)
    ingest(
        "synth",
        out / "target-cohort",
        out / "target-shards",
        image_size=DEMO_IMG_SIZE,
        overwrite=True,
    )

    index = ShardIndex.open(out / "shards")
    runs = {}
    for variant in ("nested", "image"):
        log(f"pre-training a tiny {variant} model for {steps} steps")
        model = ModelConfig(variant=variant, image_model=DEMO_IMAGE_MODEL, img_size=DEMO_IMG_SIZE)
        run_dir = out / "runs" / variant
        if run_dir.exists():  # a previous demo's run: start afresh
            shutil.rmtree(run_dir)
        runs[variant] = pretrain(
            out / "shards",
            run_dir,
            model=model,
            train=_train_config(steps, seed, variant=variant, index=index),
            progress=True,
        )

    log("embedding")
    (out / "stores").mkdir(exist_ok=True)
    stores = {
        "nested": embed(
            runs["nested"], out / "shards", out / "stores" / "nested.h5", overwrite=True
        ),
        "image": embed(runs["image"], out / "shards", out / "stores" / "image.h5", overwrite=True),
        "target": embed(
            runs["nested"],
            out / "target-shards",
            out / "stores" / "target.h5",
            image_only=True,
            overwrite=True,
        ),
    }
    log("probing (linear + kNN on the held-out patients; metadata-only baselines on the same rows)")
    probe_kw = dict(label="binary", methods=("linear", "knn"), seeds=(0, 1, 2))
    results = {
        "SLIMP (image+lesion+patient)": run_probe(
            stores["nested"], baseline=True, split="holdout", **probe_kw
        ),
        "SLIMP (image only)": run_probe(
            stores["nested"], features=["image"], split="holdout", **probe_kw
        ),
        "SimCLR (image only)": run_probe(stores["image"], split="holdout", **probe_kw),
    }
    retrieval = run_retrieval(stores["nested"])  # on the held-out patients
    log("extrapolating metadata onto the image-only target (I->L->P) and probing it")
    extrapolate(stores["nested"], stores["target"], strategy="ilp")
    # the target cohort is unseen by pre-training: a lesion-grouped random split of its rows
    results["target: image only"] = run_probe(stores["target"], split="random", **probe_kw)
    results["target: image + pseudo-metadata (ilp)"] = run_probe(
        stores["target"], pseudo="ilp", split="random", **probe_kw
    )

    table = Table(
        title="slimp demo: benign vs malignant (mean ± std over 3 seeds)",
        caption=f"reference rows: the {DEMO_HOLDOUT:.0%} of patients held out of pre-training "
        "(fixed split: seeds vary the classifier); target rows: a lesion-grouped random 90/10 "
        "split of a cohort no model was trained on",
    )
    for col in ("model / features", "method", "accuracy", "balanced acc.", "AUC"):
        table.add_column(col, justify="left" if col in ("model / features", "method") else "right")
    summary = []
    for name, res in results.items():
        for row in res["results"]:
            m = row["metrics"]
            cells = [_fmt(m.get(k)) for k in ("accuracy", "balanced_accuracy", "auc")]
            shown = "metadata only (raw columns)" if row["method"].startswith("baseline") else name
            table.add_row(shown, row["method"], *cells)
            summary.append({"model": shown, "method": row["method"], "metrics": m})
    stdout.print(table)
    i2l = retrieval.get("image_to_lesion", {})
    stdout.print(
        f"image->lesion-metadata retrieval on the held-out patients: R@1 {_fmt(i2l.get('R@1'))}, "
        f"R@10 {_fmt(i2l.get('R@10'))}, mAP {_fmt(i2l.get('mAP'))} "
        f"({retrieval['n_queries']} held-out images of {retrieval['n_lesions']} lesions; "
        f"chance R@1 = {1 / retrieval['n_lesions']:.4f})"
    )
    env = reproducibility()
    stdout.print(
        f"[dim]deterministic for: {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"CPU {env['cpu_capability']}[/]"
    )
    report = {
        "reproducibility": env,
        "results": summary,
        "retrieval": retrieval,
        "files": {
            "cohort": str(out / "cohort"),
            "shards": str(out / "shards"),
            "runs": {k: str(v) for k, v in runs.items()},
            "stores": {k: str(v) for k, v in stores.items()},
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    files = Table(title="where everything is", show_header=False)
    for k, v in [
        ("generated cohort", out / "cohort"),
        ("shards", out / "shards"),
        ("SLIMP run", runs["nested"]),
        ("SimCLR run", runs["image"]),
        ("feature stores", out / "stores"),
        ("results (JSON)", out / "demo.json"),
    ]:
        files.add_row(k, str(v))
    stdout.print(files)
    log("done")
    return report


def _fmt(v) -> str:
    if isinstance(v, dict):
        mean, std = v.get("mean"), v.get("std")
        return "-" if mean is None else f"{mean:.3f} ± {std or 0:.3f}"
    return "-" if v is None else f"{v:.3f}"
