"""Chunked similarity search (slimp_cli.eval.search) against the full matrix."""

from __future__ import annotations

import numpy as np

from slimp_cli.eval.search import count_greater, topk_cosine


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


def test_count_greater_equals_brute_force():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(40, 5)), rng.normal(size=(90, 5))
    thr = rng.uniform(-0.5, 0.5, 40).astype(np.float32)
    qg, gg = rng.integers(0, 10, 40), rng.integers(0, 10, 90)
    full = _unit(q) @ _unit(g).T
    want = ((full > thr[:, None]) & (gg[None, :] != qg[:, None])).sum(1)
    got = count_greater(
        q, g, thr, query_groups=qg, gallery_groups=gg, query_chunk=6, gallery_chunk=13, device="cpu"
    )
    np.testing.assert_array_equal(got, want)
