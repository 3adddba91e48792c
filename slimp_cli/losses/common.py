"""What every contrastive loss of slimp shares: the temperature and lambda defaults, the
gather callable of distributed training, cosine normalisation in float32 with autocast off,
and the mask that keeps other images of a lesion out of an anchor's negatives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.errors import SlimpError

Gather = Callable[[torch.Tensor], torch.Tensor]

# The paper does not give tau. We fix it (not learned) at 0.1: the usual value of SimCLR/MoCo-style
# losses with a fixed temperature and few negatives (SLIMP's outer loss sees only B=4 patients per
# batch on SLICE-3D, the inner one at most N=100 lesions). CLIP's 0.07 is the *initial* value of a
# learned temperature for batches of tens of thousands; with few negatives a lower tau mostly
# sharpens the loss on hard negatives among a patient's look-alike lesions. Exposed as
# `pretrain --temperature`.
DEFAULT_TEMPERATURE = 0.1
# lambda of eq. 3 (paper Sec. 4: lambda = 0.9).
DEFAULT_LAM = 0.9


def no_autocast(x: torch.Tensor):
    """The losses run in float32: autocast off on x's device (exact under bf16 autocast)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise SlimpError(f"temperature must be > 0, got {temperature}")


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def same_group_negatives(groups: torch.Tensor, all_groups: torch.Tensor, labels: torch.Tensor):
    """[n, G] bool: column j is another image of row i's lesion (not row i's own positive)."""
    same = groups[:, None] == all_groups[None, :]
    same[torch.arange(len(groups), device=groups.device), labels] = False
    return same
