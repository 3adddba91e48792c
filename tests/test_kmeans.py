"""Spherical k-means (SM3's pseudo-multi-labels): a loop reference, determinism, K per label."""

import numpy as np
import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.models.kmeans import pseudo_labels, spherical_kmeans
from slimp_cli.models.sm3 import LABEL_SIZES, LABELS


def ref_kmeans(x, k, seed, iters):
    """Lloyd on the unit sphere, point by point: same initial draw, first centroid on ties."""
    pts = [v / np.linalg.norm(v) for v in x.astype(np.float32)]
    rng = np.random.default_rng(seed)
    start = [int(rng.integers(len(pts)))]  # k-means++: D^2 sampling with D = 1 - cosine
    while len(start) < k:
        d2 = [
            0.0 if i in start else max(0.0, 1 - max(float(p @ pts[j]) for j in start)) ** 2
            for i, p in enumerate(pts)
        ]
        start.append(int(rng.choice(len(pts), p=np.array(d2) / sum(d2))))
    cents = [pts[i].astype(np.float64) for i in start]
    pts = [p.astype(np.float64) for p in pts]
    for it in range(iters + 1):
        labels = [int(np.argmax([p @ c for c in cents])) for p in pts]
        if it == iters:
            return np.array(labels)
        for c in range(k):
            members = [p for p, lab in zip(pts, labels) if lab == c]
            if members:
                s = np.sum(members, axis=0)
                cents[c] = s / np.linalg.norm(s)


def blobs(n_per, k, d=16, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    return torch.from_numpy(x.astype(np.float32)), np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (5, 7)])
def test_matches_the_loop_reference(k, seed):
    x, _ = blobs(20, 4, seed=seed, spread=1.5)  # overlapping: the iterations matter
    labels, centroids = spherical_kmeans(x, k, seed=seed, iters=10)
    assert labels.tolist() == ref_kmeans(x.numpy(), k, seed, 10).tolist()
    assert centroids.shape == (k, 16)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(k), atol=1e-5)


def test_finds_separated_clusters_and_is_deterministic():
    x, truth = blobs(30, 5, seed=3, spread=0.1)
    a, _ = spherical_kmeans(x, 5, seed=[0, 1, 2])
    b, _ = spherical_kmeans(x, 5, seed=[0, 1, 2])
    assert torch.equal(a, b)
    # the same partition as the truth, up to the names of the clusters
    pairs = set(zip(truth.tolist(), a.tolist()))
    assert len(pairs) == 5 and len({p for _, p in pairs}) == 5
    with pytest.raises(SlimpError, match="at least 5 points"):
        spherical_kmeans(x[:4], 5, seed=0)


def test_pseudo_labels_have_k_clusters_per_label_and_follow_the_seed():
    assert LABELS == ("DIAG", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS")
    assert LABEL_SIZES == (5, 3, 2, 3, 3, 3, 3, 2)
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(120, len(LABELS), 12, generator=g)
    labels, centroids = pseudo_labels(bank, LABEL_SIZES, seed=4, epoch=2)
    assert labels.shape == (120, 8) and labels.dtype == torch.long
    for k, size in enumerate(LABEL_SIZES):
        assert set(labels[:, k].tolist()) == set(range(size)), LABELS[k]  # exactly K_k clusters
        assert centroids[k].shape == (size, 12)
    again, _ = pseudo_labels(bank, LABEL_SIZES, seed=4, epoch=2)
    assert torch.equal(labels, again)
    other = [pseudo_labels(bank, LABEL_SIZES, seed=s, epoch=2)[0] for s in (5, 6, 7)]
    assert any(not torch.equal(labels, o) for o in other)  # the seed decides the initial draw
