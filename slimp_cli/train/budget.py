"""Optimiser steps and images seen of a run, from its sampler; the image-only baseline's recipe.

The image-only SimCLR baseline (`--variant image`) and SLIMP's nested model train on the same
images at very different batch sizes: the nested sampler takes B patients a step (PAD-UFES-20:
~7 images at B = 4), SimCLR wants hundreds of images a step. slimp matches their budget in
**images seen**: every epoch, the baseline draws the images the nested sampler draws (every
training patient's <= N lesions, re-drawn each epoch) in batches of `images_per_batch`, for the
same number of epochs. What `pretrain` sets when the options leave them out (`image_recipe`):

- images_per_batch = 256 (SimCLR's smallest standard batch, Chen et al. 2020), at most a
  quarter of an epoch's images so that small data still takes >= 4 steps an epoch;
- lr = 1.5e-4 x global batch / 256 (MoCo v3's linear rule for ViTs under AdamW, Chen, Xie & He
  2021); everything else (weight decay, warm-up, schedule, temperature) as the nested run.

`config.json` of an image-only run carries the result (`image_baseline`: batch, lr, where each
came from, steps, images seen, and the nested run's steps and images at the same B, N, epochs).
docs/method.md ("The image-only baseline") says why images seen and not steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .data import PatientInfo, image_batch, patient_infos, training_sampler
from .train_config import TrainConfig

SIMCLR_BATCH = 256
SIMCLR_BASE_LR = 1.5e-4  # per 256 images (MoCo v3, ViT + AdamW)
MIN_STEPS_PER_EPOCH = 4


def images_per_epoch(infos: Sequence[PatientInfo], use: Sequence[int], n_max: int) -> int:
    """Images an epoch draws: min(n, N) of each training patient's n lesions."""
    return sum(min(infos[p].n_lesions, n_max) for p in use)


def default_image_batch(epoch_images: int, world_size: int = 1) -> int:
    """SIMCLR_BATCH, or a quarter of an epoch's images (per process) when that is smaller."""
    return max(2, min(SIMCLR_BATCH, epoch_images // (MIN_STEPS_PER_EPOCH * world_size)))


def simclr_lr(images_per_batch: int, world_size: int = 1) -> float:
    """The linear rule: SIMCLR_BASE_LR x global batch / 256."""
    return SIMCLR_BASE_LR * images_per_batch * world_size / 256


def budget(
    infos: Sequence[PatientInfo],
    train: TrainConfig,
    *,
    per_image: bool,
    use: Sequence[int] | None = None,
    world_size: int = 1,
) -> dict:
    """Steps and images seen of a run with `train` on these patients, from its sampler.

    Returns {"steps_per_epoch", "epochs", "steps" (the schedule: epochs x steps_per_epoch),
    "images_seen" (all processes, over every epoch's plan), "images_per_step" ("patients x <=
    N" or the image batch), "lr"}. `--max-steps` may stop a run earlier: `steps` is then the
    schedule, not the run.
    """
    sampler = training_sampler(infos, train, per_image=per_image, use=use, world_size=world_size)
    seen = sum(sampler.images_in_epoch(e) for e in range(train.epochs))
    batch = image_batch(train, per_image)
    return {
        "steps_per_epoch": sampler.steps_per_epoch,
        "epochs": train.epochs,
        "steps": sampler.steps_per_epoch * train.epochs,
        "images_seen": int(seen),
        "images_per_step": f"{batch} images"
        if per_image
        else f"{train.patients_per_batch} patients x <= {train.lesions_per_patient}",
        "lr": train.lr,
    }


def image_recipe(
    train: TrainConfig,
    given: set[str],
    infos: Sequence[PatientInfo],
    use: Sequence[int] | None,
    *,
    world_size: int = 1,
    with_plans: bool = True,
) -> tuple[TrainConfig, dict]:
    """The image-only baseline's TrainConfig (images_per_batch and lr filled unless `given`)
    and its config.json record (`image_baseline`). `with_plans` False (streamed data: no
    random access to the lesions) leaves out the nested run's planned images."""
    use = list(range(len(infos))) if use is None else list(use)
    per_epoch = images_per_epoch(infos, use, train.lesions_per_patient)
    changes, record = {}, {}
    if "images_per_batch" in given:  # a TrainConfig's None: B x N (data.image_batch)
        record["images_per_batch_from"] = "given" if train.images_per_batch else "given: B x N"
    else:
        changes["images_per_batch"] = default_image_batch(per_epoch, world_size)
        record["images_per_batch_from"] = (
            f"default: {SIMCLR_BATCH}, at most a quarter of an epoch's {per_epoch} images"
        )
    if "lr" in given:
        record["lr_from"] = "given"
    else:
        batch = changes.get("images_per_batch") or image_batch(train, True)
        changes["lr"] = simclr_lr(batch, world_size)
        record["lr_from"] = f"default: 1.5e-4 x global batch {batch * world_size} / 256"
    train = train.replace(**changes) if changes else train
    record.update(
        rule="same images seen as the nested run: each epoch the <= N images of every training "
        "patient, in random batches (docs/method.md)",
        images_per_batch=image_batch(train, True),
        lr=train.lr,
        images_per_epoch=per_epoch,
    )
    record["run"] = budget(infos, train, per_image=True, use=use, world_size=world_size)
    nested = train.replace(images_per_batch=None)
    if with_plans:
        record["nested_equivalent"] = {
            k: v
            for k, v in budget(
                infos, nested, per_image=False, use=use, world_size=world_size
            ).items()
            if k != "lr"  # the nested run's own lr is its own option
        }
    return train, record


def announce(record: dict) -> str:
    """One line for stderr: the baseline's batch, lr and budget beside the nested run's."""
    run = record["run"]
    text = (
        f"image-only SimCLR baseline: {record['images_per_batch']} images a step, lr "
        f"{record['lr']:.3g} ({record['lr_from']}); {run['steps_per_epoch']} steps an epoch x "
        f"{run['epochs']} = {run['steps']:,} steps, {run['images_seen']:,} images seen"
    )
    nested = record.get("nested_equivalent")
    if nested:
        text += (
            f" (a nested run at {nested['images_per_step']}: {nested['steps']:,} steps, "
            f"{nested['images_seen']:,} images)"
        )
    return text


def run_budget(run_dir: str | Path, data: str | Path) -> dict:
    """`budget` of a finished (or started) pretrain/adapt run on its data (its own held-out
    patients left out, its world size), for reports (benchmarks/paper_tables.py)."""
    from ..data.holdout import read_holdout
    from ..data.shards import ShardIndex
    from ..models.runs import read_config

    cfg = read_config(run_dir)
    train = TrainConfig.from_dict(cfg["train"])
    index = ShardIndex.open(data)
    held = read_holdout(run_dir)
    ids = [index.patient(i).patient_id for i in range(len(index))]
    use = [i for i, pid in enumerate(ids) if held is None or pid not in held]
    world = int(cfg.get("environment", {}).get("world_size", 1) or 1)
    return budget(
        patient_infos(index),
        train,
        per_image=cfg["variant"] == "image",
        use=use,
        world_size=world,
    )
