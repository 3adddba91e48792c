"""Contrastive losses of SLIMP (paper App. C, eq. 1-3), its baselines and SM3, as pure functions.

One loss per module, each tested against a hand-written reference (tests/test_losses*.py):
- `common.py`: what they share (temperature, the gather of distributed training, cosine
  normalisation in float32, the twin-image mask);
- `info_nce.py`: symmetric InfoNCE (eq. 1); `nested.py`: SLIMP's nested loss (eq. 2-3) and the
  flat variant; `nt_xent.py`: SimCLR's NT-Xent and SLIP's image SSL term; `sm3.py`: SM3's
  cross-modal and multi-label losses;
- `compute_loss` (here): a model variant's output dict (keys = the loss's arguments) -> its loss.

Every loss L2-normalises its inputs (cosine similarity), divides by a fixed temperature and runs
in float32 with autocast disabled, so it is exact under bf16 autocast. Each returns a dict whose
"loss" entry is the scalar to minimise (plus its parts, for logging).

Distributed training: the cross-sample ("outer") losses accept `gather`, a callable that
all-gathers a `[n, D]` tensor from every rank *with gradient* and returns `[G, D]` (equal n on
every rank; the local rows at `[offset, offset + n)`). The local rows then meet every rank's rows
as negatives; each rank averages over its own rows, so DDP's gradient averaging gives the global
mean. `gather=None` (one process) uses the local rows only.

Several images of one lesion (PAD: 2,298 images of 1,641 lesions; HAM10000; HIBA's clinical +
dermoscopic pairs) carry identical metadata: `groups` (one id per image, equal for images of
one lesion) removes the *other* images of the same lesion from each anchor's negatives, so
twins are never pushed apart.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..core.errors import SlimpError
from .common import DEFAULT_LAM, DEFAULT_TEMPERATURE, Gather
from .info_nce import info_nce
from .nested import flat_loss, nested_loss
from .nt_xent import add_image_ssl, nt_xent
from .sm3 import sm3_loss

__all__ = [
    "DEFAULT_LAM",
    "DEFAULT_TEMPERATURE",
    "Gather",
    "add_image_ssl",
    "compute_loss",
    "flat_loss",
    "info_nce",
    "nested_loss",
    "nt_xent",
    "sm3_loss",
]


def compute_loss(
    variant: str,
    outputs: Mapping[str, torch.Tensor],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    lam: float = DEFAULT_LAM,
    gather: Gather | None = None,
    offset: int = 0,
) -> dict[str, torch.Tensor]:
    """The loss of a model variant, from `SlimpModel.forward`'s output dict (keys = arguments)."""
    kw = {"temperature": temperature, "gather": gather, "offset": offset}
    if variant == "nested":
        keys = ("image", "lesion", "mask", "phenotype", "patient")
        return nested_loss(*(outputs[k] for k in keys), lam=lam, groups=outputs.get("groups"), **kw)
    if variant == "flat":
        return flat_loss(outputs["image"], outputs["tabular"], groups=outputs.get("groups"), **kw)
    if variant == "image":
        return nt_xent(outputs["view1"], outputs["view2"], **kw)
    if variant == "sm3":  # SM3 (papers/sm3_paper.txt): its own module (global-batch loss)
        return sm3_loss(outputs, temperature=temperature, gather=gather)
    raise SlimpError(f"unknown variant '{variant}'; choose one of nested, flat, image")
