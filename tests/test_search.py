"""Chunked similarity search (slimp_cli.eval.search) against the full matrix."""

from __future__ import annotations

import numpy as np
import torch

from slimp_cli.eval.search import rank_counts, topk_cosine


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_chunked_topk_equals_full_matrix():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(103, 16)), rng.normal(size=(517, 16))
    full = _unit(q) @ _unit(g).T
    want_i = np.argsort(-full, axis=1)[:, :9]
    for qc, gc, cache in ((7, 50, 1 << 30), (103, 517, 1 << 30), (10, 33, 0), (10, 5, 1 << 30)):
        s, i = topk_cosine(
            q, g, k=9, query_chunk=qc, gallery_chunk=gc, cache_bytes=cache, device="cpu"
        )
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_allclose(s, np.take_along_axis(full, want_i, 1), atol=1e-5)
    s, i = topk_cosine(q, g[:4], k=9, device="cpu")  # k capped at the gallery size
    assert i.shape == (103, 4)


def test_rank_counts_equal_brute_force_with_ties():
    rng = np.random.default_rng(1)
    # rounded vectors: many exact ties between gallery items
    q, g = (
        rng.integers(-2, 3, size=(40, 5)).astype(float),
        rng.integers(-2, 3, size=(90, 5)).astype(float),
    )
    g[g.sum(1) == 0] += 1.0  # no zero vectors
    q[np.abs(q).sum(1) == 0] += 1.0
    gg = rng.integers(0, 10, 90)
    qg = gg[rng.integers(0, 90, 40)]  # every query has a relevant item
    full = (
        torch.from_numpy(_unit(q).astype(np.float32))
        @ torch.from_numpy(_unit(g).astype(np.float32)).T
    )
    full = full.numpy()
    best = np.array([full[i, gg == qg[i]].max() for i in range(40)])
    other = gg[None, :] != qg[:, None]
    want_g = ((full > best[:, None] + 1e-6) & other).sum(1)
    want_t = ((np.abs(full - best[:, None]) <= 1e-6) & other).sum(1)
    got_g, got_t = rank_counts(
        q, g, query_groups=qg, gallery_groups=gg, query_chunk=40, gallery_chunk=90, device="cpu"
    )
    np.testing.assert_array_equal(got_g, want_g)
    np.testing.assert_array_equal(got_t, want_t)
    assert want_t.sum() > 0  # the case has ties
    # chunking changes nothing
    chunked = rank_counts(
        q, g, query_groups=qg, gallery_groups=gg, query_chunk=7, gallery_chunk=13, device="cpu"
    )
    np.testing.assert_array_equal(chunked[0] + chunked[1], got_g + got_t)
