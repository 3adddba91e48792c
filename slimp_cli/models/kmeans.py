"""Spherical k-means: SM3's pseudo-multi-labels (paper Sec. III-E), deterministic for a seed.

Points and centroids live on the unit sphere and are compared by cosine similarity. The initial
centroids are K points drawn by k-means++ seeding (each next one with probability proportional
to its squared cosine distance 1 - max similarity to those drawn) from
`numpy.random.default_rng(seed)`; then a fixed number of Lloyd iterations (assign each point to
its most similar centroid, the first one on ties; move each centroid to the normalised mean of
its points; a centroid left without points stays where it was) and a last assignment. Same
points + same seed = same labels, on any run.

NOTE[DIFF]: the official SM3 code draws K random points as initial centroids; k-means++ seeding
rarely puts two initial centroids in one cluster, so a small cluster (a rare criterion value)
is less often missed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import SlimpError

KMEANS_ITERS = 10


def spherical_kmeans(
    x: torch.Tensor, k: int, *, seed: int | Sequence[int], iters: int = KMEANS_ITERS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of `x` into `k` groups by cosine similarity.

    Shape:
        x [n, d] (any float; normalised here) -> (labels [n] long in 0..k-1,
        centroids [k, d] float32, unit norm)

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> labels, _ = spherical_kmeans(x, 2, seed=0)
        >>> bool(labels[0] == labels[1]) and bool(labels[2] == labels[3]) and bool(labels[0] != labels[2])
        True
    """
    if x.dim() != 2:
        raise ValueError(f"spherical_kmeans needs [n, d] points, got {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1 or n < k:
        raise SlimpError(f"k-means with {k} clusters needs at least {k} points, got {n}")
    points = F.normalize(x.detach().float(), dim=1)
    centroids = points[kmeanspp_init(points, k, np.random.default_rng(seed))].clone()
    for it in range(iters + 1):
        labels = (points @ centroids.T).argmax(dim=1)
        if it == iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        centroids[filled] = F.normalize(sums[filled], dim=1)
    return labels, centroids


def kmeanspp_init(points: torch.Tensor, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ seeding on the sphere: indices of k distinct points of `points` [n, d] (unit)."""
    n = points.shape[0]
    chosen = [int(rng.integers(n))]
    best = (points @ points[chosen[0]]).double().cpu().numpy()
    for _ in range(1, k):
        dist = np.clip(1.0 - best, 0.0, None) ** 2
        dist[chosen] = 0.0
        total = dist.sum()
        if total > 0:
            nxt = int(rng.choice(n, p=dist / total))
        else:  # every point coincides with a chosen one: any other point
            rest = np.setdiff1d(np.arange(n), chosen)
            nxt = int(rng.choice(rest))
        chosen.append(nxt)
        best = np.maximum(best, (points @ points[nxt]).double().cpu().numpy())
    return chosen


def pseudo_labels(
    bank: torch.Tensor,
    sizes: Sequence[int],
    *,
    seed: int,
    epoch: int,
    iters: int = KMEANS_ITERS,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-label k-means on a memory bank: label k's embeddings clustered into sizes[k] groups.

    Label k draws its initial centroids from `default_rng([seed, epoch, k])`, so an epoch's
    pseudo-labels depend only on the bank, the seed and the epoch.

    Shape:
        bank [n, L, d], len(sizes) = L -> (labels [n, L] long, [centroids [sizes[k], d]] * L)
    """
    if bank.dim() != 3 or bank.shape[1] != len(sizes):
        raise ValueError(
            f"pseudo_labels needs a bank [n, {len(sizes)}, d], got {tuple(bank.shape)}"
        )
    labels, centroids = [], []
    for k, size in enumerate(sizes):
        lab, cen = spherical_kmeans(bank[:, k], int(size), seed=[seed, epoch, k], iters=iters)
        labels.append(lab)
        centroids.append(cen)
    return torch.stack(labels, dim=1), centroids
