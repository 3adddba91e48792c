"""The training recipe (`TrainConfig`): optimiser, schedule, batches, seed, device.

The architecture lives in `slimp_cli.model_config.ModelConfig`; this is everything else that decides
a run's trajectory. `to_dict()` goes into `config.json` beside `model`; `from_dict()` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..devices import check_device_name
from ..errors import SlimpError
from ..losses import DEFAULT_LAM, DEFAULT_TEMPERATURE
from ..model_config import DictConfig, positive_int
from .report import REPORTERS

METHODS = ("slimp", "sm3")

# Fields that may change between a run and its `--resume` without changing the weights it
# reaches (everything else must match the saved run, or resuming would not continue it).
RESUMABLE_CHANGES = (
    "max_steps",
    "workers",
    "prefetch",
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

    # "slimp" (nested image-metadata contrastive learning). "sm3" is reserved for the SM3
    # method of papers/sm3_paper.txt and is rejected ("SM3 is not implemented yet").
    method: str = "slimp"
    # B: patients per optimisation step (per process under torchrun). Paper: 4 on SLICE-3D
    # (pre-training), 64 for continual pre-training (`adapt` uses 64 unless told otherwise).
    patients_per_batch: int = 4
    # N_max: at most this many lesions (images) per patient per step, re-sampled every epoch.
    # Paper: 100 with ViT-S/T, 50 with ViT-B.
    lesions_per_patient: int = 100
    # Passes over the patients. The learning-rate schedule spans all of them (paper: 150 for
    # pre-training, 100 for continual pre-training).
    epochs: int = 150
    # Stop after this many optimiser steps in total (None = run all epochs). It does not
    # shorten the schedule, so a run stopped early and `--resume`d with a larger value ends
    # where an uninterrupted run ends.
    max_steps: int | None = None
    # AdamW peak learning rate (paper: 1e-4) and decoupled weight decay (applied to weight
    # matrices and embeddings only, not to biases, norms, CLS tokens or 1-D parameters).
    lr: float = 1e-4
    weight_decay: float = 0.05
    # Linear warm-up steps before the cosine decay to 0. None = 5% of the schedule.
    warmup_steps: int | None = None
    # InfoNCE temperature tau (cosine similarity / tau), fixed. The paper does not give it; 0.1
    # is the usual value with few negatives (see slimp_cli.losses.DEFAULT_TEMPERATURE).
    temperature: float = DEFAULT_TEMPERATURE
    # lambda of eq. 3: lambda * inner (lesion) loss + (1 - lambda) * outer (patient) loss.
    lam: float = DEFAULT_LAM
    # Global gradient-norm clipping threshold (None = no clipping).
    grad_clip: float | None = 1.0
    # Seed of everything random: model initialisation, patient order, lesion sampling,
    # augmentation and dropout. Same seed + same data + CPU = same weights.
    seed: int = 0
    # "auto" (CUDA when available), "cpu", "cuda", "cuda:N" or "mps". CUDA trains under bf16
    # autocast.
    device: str = "auto"
    # DataLoader worker processes decoding JPEGs (0 = in the main process) and the batches each
    # worker prepares ahead.
    workers: int = 4
    prefetch: int = 2
    # Random image augmentation (random resized crop of 60-100% of the area, horizontal and
    # vertical flips, small brightness/contrast/saturation/hue jitter). The `image` variant
    # always augments: its two views must differ.
    augment: bool = False
    # Positive sampling (paper App. D): a patient's malignant lesions are always among its N.
    positive_sampling: bool = True
    # torch.compile the model (CUDA; first steps are slow while it compiles).
    compile: bool = False
    # Write a metrics.jsonl line (means over the interval) every this many steps; when stderr
    # is not a terminal, also print it as a plain log line (instead of a progress bar).
    log_every: int = 10
    # Mirror metrics.jsonl to "tensorboard" (RUN/tensorboard/; optional dependency) or "none".
    report_to: str = "none"
    # Also keep checkpoint-epoch-XXXX.pt after every epoch (checkpoint-last.pt always kept).
    keep_epoch_checkpoints: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SlimpError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
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
        if self.warmup_steps is not None:
            _non_negative_int("warmup_steps", self.warmup_steps)
        _non_negative_int("workers", self.workers)
        _non_negative_int("seed", self.seed)
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
        if self.report_to not in REPORTERS:
            raise SlimpError(
                f"report_to must be one of {', '.join(REPORTERS)}, got {self.report_to!r}"
            )
        for name in ("augment", "positive_sampling", "compile", "keep_epoch_checkpoints"):
            if not isinstance(getattr(self, name), bool):
                raise SlimpError(f"{name} must be true or false, got {getattr(self, name)!r}")

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
