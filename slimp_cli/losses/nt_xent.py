"""SimCLR's NT-Xent (the image-only baseline, SM3's per-modality loss) and SLIP's image
self-supervision term beside a SLIMP loss (`--image-ssl-weight`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..core.errors import SlimpError
from .common import DEFAULT_TEMPERATURE, Gather, check_temperature, no_autocast, normalize


def nt_xent(
    view1: torch.Tensor,
    view2: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SimCLR's NT-Xent: each of the 2L views must find its other view among the 2L - 1 others.

    `groups` (one lesion id per image, or None): the views of *another* image of the same
    lesion are left out of an anchor's softmax (neither positive nor negative), as the inner
    and flat losses treat twins.

    Shape:
        view1, view2: [L, D] (row i of each: two augmentations of one image); groups: [L] ints
        or None. Returns {"loss": scalar} (mean over the 2L anchors).

    Examples:
        >>> v = torch.eye(4)
        >>> float(nt_xent(v, v, temperature=0.01)["loss"]) < 1e-6
        True
    """
    check_temperature(temperature)
    if view1.shape != view2.shape or view1.dim() != 2:
        raise ValueError(f"nt_xent needs two [L, D] tensors, got {view1.shape}, {view2.shape}")
    with no_autocast(view1):
        v1, v2 = normalize(view1), normalize(view2)
        n = v1.shape[0]
        if gather is None:
            g1, g2, offset = v1, v2, 0
        else:
            g1, g2 = gather(v1), gather(v2)
        total = g1.shape[0]
        anchors = torch.cat([v1, v2])  # [2n, D]
        logits = anchors @ torch.cat([g1, g2]).T / temperature  # [2n, 2G]
        local = torch.arange(n, device=v1.device) + offset
        self_index = torch.cat([local, local + total])
        positive = torch.cat([local + total, local])
        rows = torch.arange(2 * n, device=v1.device)
        logits = logits.index_put((rows, self_index), torch.tensor(float("-inf"), device=v1.device))
        if groups is not None:
            g = groups.to(device=v1.device, dtype=torch.float64)  # float64: exact when gathered
            g_all = g if gather is None else gather(g)
            twins = torch.cat([g, g])[:, None] == torch.cat([g_all, g_all])[None, :]
            twins[rows, self_index] = False
            twins[rows, positive] = False
            logits = logits.masked_fill(twins, float("-inf"))
        return {"loss": F.cross_entropy(logits, positive)}


def add_image_ssl(
    losses: Mapping[str, torch.Tensor],
    view1: torch.Tensor,
    view2: torch.Tensor,
    *,
    weight: float,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SLIP (Mu et al. 2022): an image self-supervision term beside a SLIMP loss.

    Returns `losses` with `loss` = losses["loss"] + weight * NT-Xent(view1, view2), plus
    `loss_main` (the SLIMP loss alone) and `loss_ssl` (the NT-Xent, unweighted). `view1`,
    `view2` are the SSL head's outputs for two SimCLR views of each image; `gather`/`offset`
    are those of the views' rows (not the patients'), `groups` their lesion ids.

    Shape:
        view1, view2: [L, P]; groups: [L] or None. Returns float32 scalars.

    Examples:
        >>> base = {"loss": torch.tensor(2.0)}
        >>> v = torch.eye(4)
        >>> out = add_image_ssl(base, v, v, weight=0.5, temperature=1.0)
        >>> round(float(out["loss"] - 2.0 - 0.5 * out["loss_ssl"]), 6)
        0.0
    """
    if not weight >= 0:
        raise SlimpError(f"the image SSL weight must be >= 0, got {weight}")
    ssl = nt_xent(
        view1, view2, temperature=temperature, gather=gather, offset=offset, groups=groups
    )["loss"]
    main = losses["loss"]
    return {**losses, "loss": main + weight * ssl, "loss_main": main, "loss_ssl": ssl}
