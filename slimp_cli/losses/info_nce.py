"""Symmetric InfoNCE (the CLIP loss): SLIMP eq. 1, the building block of the nested and flat
losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import (
    DEFAULT_TEMPERATURE,
    Gather,
    check_temperature,
    no_autocast,
    normalize,
    same_group_negatives,
)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    gather: Gather | None = None,
    offset: int = 0,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss) between paired rows of `a` and `b`, cosine similarity / tau.

    Row i of `a` and row i of `b` are the positive pair; every other row of the other side is a
    negative, except rows of the same `groups` id (other images of the same lesion), which are
    left out of the softmax. The a->b and b->a cross-entropies are averaged.

    Shape:
        a, b: [n, D] (any float dtype); groups: [n] ints or None. Returns a float32 scalar.

    Examples:
        >>> a = torch.eye(3)
        >>> float(info_nce(a, a, temperature=0.01)) < 1e-6
        True
    """
    check_temperature(temperature)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce needs two [n, D] tensors got {a.shape}, {b.shape}")
    with no_autocast(a):
        a, b = normalize(a), normalize(b)
        a_all, b_all = (a, b) if gather is None else (gather(a), gather(b))
        labels = torch.arange(a.shape[0], device=a.device) + (0 if gather is None else offset)
        logits_ab, logits_ba = a @ b_all.T / temperature, b @ a_all.T / temperature
        if groups is not None:
            g = groups.to(torch.float64)  # float64: exact ids, and the gather works on floats
            g_all = g if gather is None else gather(g)
            twins = same_group_negatives(g, g_all, labels)
            logits_ab = logits_ab.masked_fill(twins, float("-inf"))
            logits_ba = logits_ba.masked_fill(twins, float("-inf"))
        loss_ab = F.cross_entropy(logits_ab, labels)
        loss_ba = F.cross_entropy(logits_ba, labels)
        return (loss_ab + loss_ba) / 2
