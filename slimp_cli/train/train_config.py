"""The training recipe (`TrainConfig`): optimiser, schedule, batches, seed, device.

The architecture lives in `slimp_cli.models.config.ModelConfig`; this is everything else that decides
a run's trajectory. `to_dict()` goes into `config.json` beside `model`; `from_dict()` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..core.devices import check_device_name
from ..core.errors import SlimpError, check_seed
from ..losses import DEFAULT_LAM, DEFAULT_TEMPERATURE
from ..models.config import DictConfig, positive_int
from .report import parse_report_to

METHODS = ("slimp", "sm3")
# SM3's two pre-training stages (papers/sm3_paper.txt Sec. III-D and III-E).
STAGES = ("multimodal", "multilabel")

# Fields that may change between a run and its `--resume` without changing the weights it
# reaches (everything else must match the saved run, or resuming would not continue it).
RESUMABLE_CHANGES = (
    "max_steps",
    "workers",
    "prefetch",
    "grad_checkpointing",
    "log_every",
    "compile",
    "device",
    "keep_epoch_checkpoints",
    "report_to",
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(DictConfig):
    """How to train (pre-training and continual pre-training share it).

    Examples:
        >>> cfg = TrainConfig(patients_per_batch=8, lesions_per_patient=4, epochs=2)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    _KIND = "train option"

    # "slimp" (nested image-metadata contrastive learning) or "sm3" (papers/sm3_paper.txt:
    # dermoscopic + clinical image branches; its defaults are the paper's, see train/sm3.py).
    method: str = "slimp"
    # SM3 only: "multimodal" (stage 1: NT-Xent per modality + the cross-modal loss) or
    # "multilabel" (stage 2: pseudo-multi-label learning from the stage-1 run named by `init`).
    stage: str = "multimodal"
    # SM3 stage 2: the stage-1 run dir (or checkpoint file) whose weights it starts from.
    init: str | None = None
    # B: patients per optimisation step (per process under torchrun). Paper: 4 on SLICE-3D
    # (pre-training), 64 for continual pre-training (`adapt` uses 64 unless told otherwise).
    patients_per_batch: int = 4
    # N_max: at most this many lesions (images) per patient per step, re-sampled every epoch.
    # Paper: 100 with ViT-S/T, 50 with ViT-B.
    lesions_per_patient: int = 100
    # Image-only baseline (`--variant image`, SimCLR) only: images per optimiser step (per
    # process), drawn at random across patients from each epoch's images (every training
    # patient's <= N lesions: the images a nested run sees per epoch). `pretrain` given options
    # (CLI, dict) sets 256 (at most a quarter of an epoch's images) and lr 1.5e-4 x batch / 256;
    # None in a TrainConfig means B x N (train/budget.py).
    # NOTE[DIFF]: the paper gives no SimCLR recipe; see docs/method.md "image-only baseline".
    images_per_batch: int | None = None
    # Passes over the patients. The learning-rate schedule spans all of them (paper: 150 for
    # pre-training, 100 for continual pre-training).
    epochs: int = 150
    # Stop after this many optimiser steps in total (None = run all epochs). It does not
    # shorten the schedule, so a run stopped early and `--resume`d with a larger value ends
    # where an uninterrupted run ends.
    max_steps: int | None = None
    # AdamW peak learning rate (paper: 1e-4) and decoupled weight decay (applied to weight
    # matrices and embeddings only, not to biases, norms, CLS tokens or 1-D parameters).
    # NOTE[DIFF]: the paper gives AdamW and lr 1e-4 only; weight decay 0.05 is our choice (the
    # usual ViT value); --weight-decay 0 gives plain Adam-with-decoupled-0.
    lr: float = 1e-4
    weight_decay: float = 0.05
    # Linear warm-up steps before the cosine decay to 0. None = 5% of the schedule.
    # NOTE[DIFF]: the paper states no schedule; warm-up + cosine is our choice (stable ViT
    # training from scratch). --warmup-steps 0 starts at the peak rate.
    warmup_steps: int | None = None
    # InfoNCE temperature tau (cosine similarity / tau), fixed. The paper does not give it; 0.1
    # is the usual value with few negatives (see slimp_cli.losses.DEFAULT_TEMPERATURE).
    temperature: float = DEFAULT_TEMPERATURE
    # lambda of eq. 3: lambda * inner (lesion) loss + (1 - lambda) * outer (patient) loss.
    lam: float = DEFAULT_LAM
    # Global gradient-norm clipping threshold (None = no clipping).
    # NOTE[DIFF]: not in the paper; 1.0 guards the small-batch outer loss against spikes.
    grad_clip: float | None = 1.0
    # Seed of everything random: model initialisation, patient order, lesion sampling,
    # augmentation and dropout. Same seed + same data + CPU = same weights.
    seed: int = 0
    # "auto" (CUDA when available), "cpu", "cuda", "cuda:N" or "mps" (see `precision`).
    device: str = "auto"
    # DataLoader worker processes decoding JPEGs (0 = in the main process; None = the cores
    # this process may use, at most 16: devices.default_workers) and the batches each worker
    # prepares ahead.
    workers: int | None = None
    prefetch: int = 2
    # Random image augmentation (random resized crop of 60-100% of the area, horizontal and
    # vertical flips, small brightness/contrast/saturation/hue jitter). The `image` variant
    # always augments: its two views must differ.
    augment: bool = False
    # Augmentation recipe: "auto" (the standard SimCLR recipe for the image-only baseline, the
    # light one above for SLIMP), "light", "simclr", "sm3" (SM3's official SimCLR parameters)
    # or "mild" (SimCLR's small-image recipe with SM3's crop; SM3's stage-1 default from random
    # weights, train/sm3.py RECIPES).
    augment_recipe: str = "auto"
    # Positive sampling (paper App. D): a patient's malignant lesions are always among its N.
    # On for pretrain; `adapt` turns it off by default (the target stage is class-agnostic).
    positive_sampling: bool = True
    # Fraction of patients held out of training (patient-grouped, stratified on having a
    # malignant lesion; holdout.json): never sampled, they give the per-epoch validation loss
    # and the rows `probe`/`retrieve` report on. 0 trains on every patient (with a warning).
    # "official": the patients of the dataset's official test split (Derm7pt's fixed split).
    holdout: float | str = 0.1
    # Seed of the held-out draw (its own stream: changing --seed keeps the same patients out).
    holdout_seed: int = 0
    # "auto" (bf16 on GPUs with fast bf16, fp16 with a gradient scaler on the others, fp32 on
    # the CPU), "bf16", "fp16" or "fp32".
    precision: str = "auto"
    # Recompute the image encoder's blocks in the backward pass (less memory, ~30% more time).
    grad_checkpointing: bool = False
    # torch.compile the model (CUDA; first steps are slow while it compiles).
    compile: bool = False
    # Write a metrics.jsonl line (means over the interval) every this many steps; when stderr
    # is not a terminal, also print it as a plain log line (instead of a progress bar).
    log_every: int = 10
    # Mirror metrics.jsonl to a comma list of "tensorboard" (RUN/tensorboard/), "wandb"
    # (RUN/wandb/; both optional dependencies), or "none".
    report_to: str = "none"
    # Also keep checkpoint-epoch-XXXX.pt after every epoch (checkpoint-last.pt always kept).
    keep_epoch_checkpoints: bool = False
    # W of an image self-supervision term beside SLIMP's loss (SLIP, Mu et al. 2022): loss =
    # nested (or flat) + W * NT-Xent between two SimCLR views of every image (train/ssl.py).
    # NOTE[DIFF]: not in the paper; 0 (default) trains the paper's loss and draws no extra view.
    image_ssl_weight: float = 0.0
    # Where JPEGs are decoded: "cpu" (DataLoader workers, PIL) or "gpu" (the batch's bytes on
    # the CUDA device with nvJPEG, then resize/crop/flip there: slimp_cli/data/decode.py).
    decode: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SlimpError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.stage not in STAGES:
            raise SlimpError(f"unknown stage '{self.stage}'; choose one of {', '.join(STAGES)}")
        if self.method != "sm3" and (self.stage != "multimodal" or self.init is not None):
            raise SlimpError("--stage and --init are options of --method sm3")
        if self.init is not None and not isinstance(self.init, str):
            raise SlimpError(f"init must be a run dir path or null, got {self.init!r}")
        for name in (
            "patients_per_batch",
            "lesions_per_patient",
            "epochs",
            "log_every",
            "prefetch",
        ):
            positive_int(name, getattr(self, name))
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        if self.images_per_batch is not None:
            positive_int("images_per_batch", self.images_per_batch)
            if self.images_per_batch < 2:
                raise SlimpError("images_per_batch must be at least 2 (a contrastive batch)")
        if self.warmup_steps is not None:
            _non_negative_int("warmup_steps", self.warmup_steps)
        if self.workers is not None:
            _non_negative_int("workers", self.workers)
        check_seed(self.seed, "seed")
        check_seed(self.holdout_seed, "holdout_seed")
        if isinstance(self.holdout, str):
            if self.holdout != "official":
                raise SlimpError(
                    f"holdout must be a fraction in [0, 1) or 'official', got {self.holdout!r}"
                )
        else:
            _number("holdout", self.holdout)
        if not isinstance(self.holdout, str) and not 0.0 <= self.holdout < 1.0:
            raise SlimpError(f"holdout must be a fraction in [0, 1), got {self.holdout}")
        _positive_float("lr", self.lr)
        _positive_float("temperature", self.temperature)
        _number("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise SlimpError(f"weight_decay must be >= 0, got {self.weight_decay}")
        _number("lam", self.lam)
        if not 0.0 <= self.lam <= 1.0:
            raise SlimpError(f"lam must be in [0, 1], got {self.lam}")
        if self.grad_clip is not None:
            _positive_float("grad_clip", self.grad_clip)
        check_device_name(self.device)
        if self.augment_recipe not in ("auto", "light", "simclr", "sm3", "mild"):
            raise SlimpError(
                f"unknown augment_recipe {self.augment_recipe!r}; choose auto, light, simclr, sm3 or mild"
            )
        parse_report_to(self.report_to)  # a comma list of tensorboard, wandb; or none
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise SlimpError(
                f"unknown precision {self.precision!r}; choose auto, bf16, fp16 or fp32"
            )
        for name in (
            "augment",
            "positive_sampling",
            "compile",
            "keep_epoch_checkpoints",
            "grad_checkpointing",
        ):
            if not isinstance(getattr(self, name), bool):
                raise SlimpError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.decode not in ("cpu", "gpu"):
            raise SlimpError(f"unknown decode {self.decode!r}; choose cpu or gpu")
        if self.decode == "gpu" and (self.method != "slimp" or self.image_ssl_weight > 0):
            raise SlimpError(
                "--decode gpu makes SLIMP's own views (eval or --augment); use --decode cpu "
                "with --method sm3 or --image-ssl-weight"
            )
        _number("image_ssl_weight", self.image_ssl_weight)
        if self.image_ssl_weight < 0:
            raise SlimpError(f"image_ssl_weight must be >= 0, got {self.image_ssl_weight}")
        if self.image_ssl_weight > 0 and self.method != "slimp":
            raise SlimpError(
                "--image-ssl-weight adds image self-supervision to SLIMP's loss; SM3 has its own"
            )

    def schedule_warmup(self, total_steps: int) -> int:
        """Warm-up steps for a schedule of `total_steps` (default 5%, at least 1)."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return max(1, int(round(0.05 * total_steps)))


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SlimpError(f"{name} must be an integer >= 0, got {value!r}")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SlimpError(f"{name} must be a finite number, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    _number(name, value)
    if value <= 0:
        raise SlimpError(f"{name} must be > 0, got {value}")
