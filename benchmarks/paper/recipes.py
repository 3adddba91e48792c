"""The presets: every training stage's recipe, the probe, the split; and their docs table.

`PRESETS[name]["stages"]` holds one recipe per training stage, each with the paper section it
follows. `recipe_markdown()` renders the paper preset's stages as the table of docs/method.md
(between `RECIPE_BEGIN` and `RECIPE_END`); tests/test_paper_tables.py checks the docs for drift
and the paper preset against the paper's own numbers.

Stages (the `stage` of every trained run):
- `scratch`: pre-training on the target itself from random weights (Table 3, "trained on each
  dataset from scratch"); its image-only twin `scratch_image` (SimCLR on the same images);
- `slice3d`: pre-training on SLICE-3D (Sec. 4.2) and `slice3d_image` (Table 2's SimCLR
  "pre-trained on SLICE-3D");
- `adapt`: continual pre-training of a SLICE-3D model on the target (Sec. 3.2, 4.2, App. D).
"""

from __future__ import annotations

# Keys of a stage recipe that are not TrainConfig fields.
META_KEYS = ("paper", "data", "models", "tune")

PRESETS: dict[str, dict] = {
    # A CI smoke test: minutes on 2 CPU cores. A 2-block ViT (width 64) on 32 px images, a few
    # epochs, 20% of the patients held out (more held-out rows than 10% on subsets this small);
    # SLICE-3D is a generated cohort of its schema (`--slice3d-synth 60`).
    "cpu": {
        "image_size": 32,
        "model": dict(image_model="vit_test", img_size=32, tab_dim=32, embed_dim=32, tab_layers=2),
        # how to run, not what to learn (not part of any recipe)
        "run": dict(device="cpu", workers=0, log_every=50),
        "holdout": dict(holdout=0.2, holdout_seed=0),
        "stages": {
            "scratch": dict(
                paper="Table 3 (smoke-test scale)",
                data="target",
                models="nested, flat",
                patients_per_batch=16,
                lesions_per_patient=4,
                epochs=3,
                lr=1e-3,
                warmup_steps=5,
            ),
            "scratch_image": dict(
                paper="image-only baseline (docs/method.md), smoke-test scale",
                data="target",
                models="image (SimCLR)",
                patients_per_batch=16,
                lesions_per_patient=4,
                epochs=3,
                images_per_batch=64,
                lr=1e-3,
                warmup_steps=5,
            ),
            "slice3d": dict(
                paper="Sec. 4.2 (smoke-test scale)",
                data="SLICE-3D",
                models="nested, flat",
                patients_per_batch=8,
                lesions_per_patient=8,
                epochs=3,
                lr=1e-3,
                warmup_steps=5,
            ),
            "slice3d_image": dict(
                paper="Table 2 SimCLR (smoke-test scale)",
                data="SLICE-3D",
                models="image (SimCLR)",
                patients_per_batch=8,
                lesions_per_patient=8,
                epochs=3,
                images_per_batch=64,
                lr=1e-3,
                warmup_steps=5,
            ),
            "adapt": dict(
                paper="Sec. 4.2, App. D (B = 64; smoke-test epochs)",
                data="target",
                models="nested, flat from SLICE-3D",
                tune="embeddings",
                patients_per_batch=64,
                lesions_per_patient=4,
                epochs=2,
                lr=1e-3,
                warmup_steps=2,
            ),
        },
        "embed_batch": 128,
        # patient-bootstrap resamples of every interval (probe --bootstrap; 1000 = its default)
        "bootstrap": 200,
        "device": "cpu",
        "torch_threads": 1,
        "ingest_workers": 2,
        # run_probe's own defaults (sklearn logistic regression): the path CI runs
        "probe": {},
        "synth_image_size": 32,
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
        "sm3_probe": dict(split="holdout"),
    },
    # The papers' recipes for a GPU: ViT-S/16 at 224 px, 2 TRACE layers (Table 9's parameter
    # counts, docs/method.md), 10% of the patients held out (the paper's 90/10 split).
    "paper": {
        "image_size": 256,
        "model": dict(image_model="vit_small_patch16_224", img_size=224, tab_layers=2),
        "run": dict(device="auto", workers=8, log_every=50),
        "holdout": dict(holdout=0.1, holdout_seed=0),
        "stages": {
            # Table 3 gives no recipe of its own: "trained on each dataset from scratch" is a
            # pre-training, so Sec. 4.2's pre-training recipe (B = 4). Table 15's B = 64 is the
            # continual stage's batch (embeddings only); from scratch it would cut the steps
            # 16x (PAD: 2,900 instead of 46,350) for a ViT-S trained from random weights.
            "scratch": dict(
                paper="Table 3 with Sec. 4.2's pre-training recipe",
                data="target",
                models="nested, flat",
                patients_per_batch=4,
                lesions_per_patient=100,
                epochs=150,
                lr=1e-4,
            ),
            # SimCLR at its own batch and lr (train/budget.py defaults: 256 images, lr 1.5e-4
            # x batch / 256), the nested run's images seen
            "scratch_image": dict(
                paper="image-only baseline (docs/method.md)",
                data="target",
                models="image (SimCLR)",
                patients_per_batch=4,
                lesions_per_patient=100,
                epochs=150,
            ),
            "slice3d": dict(
                paper="Sec. 4.2",
                data="SLICE-3D",
                models="nested, flat",
                patients_per_batch=4,
                lesions_per_patient=100,
                epochs=150,
                lr=1e-4,
            ),
            "slice3d_image": dict(
                paper="Table 2 SimCLR (recipe: docs/method.md)",
                data="SLICE-3D",
                models="image (SimCLR)",
                patients_per_batch=4,
                lesions_per_patient=100,
                epochs=150,
            ),
            "adapt": dict(
                paper="Sec. 3.2, 4.2, App. D",
                data="target",
                models="nested, flat from SLICE-3D",
                tune="embeddings",
                patients_per_batch=64,
                lesions_per_patient=100,
                epochs=100,
                lr=1e-4,
            ),
        },
        "embed_batch": 256,
        "bootstrap": 1000,
        "device": "auto",
        "torch_threads": None,
        "ingest_workers": 8,
        # Sec. 4.2: "linear probing with binary cross entropy loss (BCE) and the AdamW
        # optimization algorithm" (`probe --classifier linear`)
        "probe": dict(classifier="linear"),
        "synth_image_size": 64,
        # SM3's own paper settings (stage 1: resnet50, batch 96, lr 1e-6, 400 epochs; sm3_paper)
        "sm3_model": dict(image_model="resnet50", img_size=224),
        # pre-trained without the official test cases (`--holdout official`), which it scores
        "sm3_train": dict(
            method="sm3", holdout="official", holdout_seed=0, device="auto", workers=8
        ),
        # SM3 Tables I-III: Kawahara's fixed Derm7pt split (`--split official`)
        "sm3_probe": dict(split="official"),
    },
}

# The stage a trained model's run uses, by where it trains and whether it is image-only.
IMAGE_STAGE = {"scratch": "scratch_image", "slice3d": "slice3d_image"}


def stage_recipe(preset: dict, stage: str, *, seed: int, overrides: dict | None = None) -> dict:
    """The TrainConfig options of one training stage (recipe + holdout + how to run + seed)."""
    recipe = {k: v for k, v in preset["stages"][stage].items() if k not in META_KEYS}
    return {**recipe, **preset["holdout"], **preset["run"], **(overrides or {}), "seed": seed}


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


RECIPE_BEGIN = (
    "<!-- paper-recipe: `python benchmarks/paper_tables.py --recipe-table --preset paper` -->"
)
RECIPE_END = "<!-- /paper-recipe -->"


def recipe_markdown(name: str = "paper") -> str:
    """The preset's training stages, probe and split as a markdown table (docs/method.md)."""
    preset = PRESETS[name]
    head = [
        "stage",
        "models",
        "data",
        "B (patients)",
        "N (lesions)",
        "images a step",
        "epochs",
        "lr",
        "trains",
        "paper",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for stage, r in preset["stages"].items():
        image = stage in IMAGE_STAGE.values()
        cells = [
            f"`{stage}`",
            r["models"],
            r["data"],
            "—" if image else _cell(r.get("patients_per_batch")),
            _cell(r.get("lesions_per_patient")),
            _cell(r.get("images_per_batch", "256 (default)" if image else None)),
            _cell(r.get("epochs")),
            _cell(r.get("lr", "1.5e-4 x batch/256 (default)" if image else None)),
            "embedding layers" if r.get("tune") == "embeddings" else "all",
            r["paper"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    probe = preset["probe"].get("classifier", "logreg")
    held = preset["holdout"]["holdout"]
    lines += [
        "",
        f"Model: {preset['model']['image_model']} at {preset['model']['img_size']} px, "
        f"{preset['model'].get('tab_layers', 1)} TRACE layers. Probe: `{probe}` "
        + ("(Sec. 4.2: BCE + AdamW). " if probe == "linear" else "(sklearn logistic regression). ")
        + f"Held out: {held:.0%} of each dataset's patients (seed "
        f"{preset['holdout']['holdout_seed']}), the same patients for every model. SM3: "
        f"`{preset['sm3_probe']['split']}` split"
        + (
            ", its test cases held out of pre-training (`--holdout official`)."
            if preset["sm3_train"].get("holdout") == "official"
            else "."
        ),
    ]
    return "\n".join(lines)
