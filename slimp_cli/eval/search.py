"""Chunked cosine-similarity search (torch; GPU when asked and present).

Queries are processed in chunks and the gallery in chunks, keeping a running top-k (or a running
count), so a 400,000 x 400,000 problem never materialises an N x N matrix: peak memory is
query_chunk x gallery_chunk similarities plus the gallery itself when it fits `cache_bytes` on
the device. Inputs may be numpy arrays or h5py datasets (read one chunk at a time).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..core.devices import resolve_device
from ..core.errors import SlimpError

QUERY_CHUNK = 4096
GALLERY_CHUNK = 16384
# Cosines this close count as equal in retrieval ranks (a few float32 ulps at 1.0).
TIE_TOLERANCE = 1e-6  # 4096 x 16384 float32 similarities = 256 MiB per block


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero). Shape: [n, D] -> [n, D] float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Gallery:
    """Normalised gallery chunks on the device, cached when they fit `cache_bytes`."""

    def __init__(self, gallery, *, chunk: int, device: torch.device, cache_bytes: int) -> None:
        self.gallery, self.chunk, self.device = gallery, max(1, chunk), device
        self.n = int(gallery.shape[0])
        nbytes = self.n * int(gallery.shape[1]) * 4
        self.cache: list[torch.Tensor] | None = [] if nbytes <= cache_bytes else None
        if self.cache is not None:
            self.cache = [self._load(s) for s in range(0, self.n, self.chunk)]

    def _load(self, start: int) -> torch.Tensor:
        block = np.asarray(self.gallery[start : start + self.chunk], dtype=np.float32)
        return _unit(torch.from_numpy(block).to(self.device))

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        for i, start in enumerate(range(0, self.n, self.chunk)):
            yield start, (self.cache[i] if self.cache is not None else self._load(start))


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check(queries, gallery) -> None:
    if queries.shape[1] != gallery.shape[1]:
        raise SlimpError(
            f"similarity search: query dimension {queries.shape[1]} != gallery dimension {gallery.shape[1]}"
        )
    if gallery.shape[0] == 0:
        raise SlimpError("similarity search: the gallery is empty")


def iter_topk(
    queries,
    gallery,
    *,
    k: int,
    query_chunk: int = QUERY_CHUNK,
    gallery_chunk: int = GALLERY_CHUNK,
    device: str = "cpu",
    cache_bytes: int = 1 << 30,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (start, scores [q, k], indices [q, k]) per query chunk, best first.

    Shape: queries [Nq, D], gallery [Ng, D]; k is capped at Ng.
    """
    _check(queries, gallery)
    dev = resolve_device(device)
    k = min(int(k), int(gallery.shape[0]))
    gal = _Gallery(gallery, chunk=gallery_chunk, device=dev, cache_bytes=cache_bytes)
    for qs in range(0, int(queries.shape[0]), max(1, query_chunk)):
        q = _unit(
            torch.from_numpy(np.asarray(queries[qs : qs + query_chunk], dtype=np.float32)).to(dev)
        )
        best_s = torch.full((q.shape[0], 0), -torch.inf, device=dev)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=dev)
        for gs, g in gal:
            sims = q @ g.T
            s, i = sims.topk(min(k, g.shape[0]), dim=1)
            # merge the chunk's top-k with the running top-k
            best_s, pos = torch.cat([best_s, s], 1).topk(
                min(k, best_s.shape[1] + s.shape[1]), dim=1
            )
            best_i = torch.cat([best_i, i + gs], 1).gather(1, pos)
        yield qs, best_s.cpu().numpy(), best_i.cpu().numpy()


def topk_cosine(queries, gallery, *, k: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every query. Shape: -> scores [Nq, k] float32, indices [Nq, k] int64."""
    parts = list(iter_topk(queries, gallery, k=k, **kw))
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def rank_counts(
    queries,
    gallery,
    *,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    query_chunk: int = QUERY_CHUNK,
    gallery_chunk: int = GALLERY_CHUNK,
    device: str = "cpu",
    cache_bytes: int = 1 << 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, where its best relevant item ranks: (greater, tied) counts of non-relevant
    gallery items with a cosine strictly above / exactly equal to the best relevant one's.

    The relevant items of query i are the gallery items with gallery_groups == query_groups[i].
    Every similarity, the relevant item's included, comes from the same chunked matrix product
    (float32, on `device`). Similarities within TIE_TOLERANCE of the best relevant one count as
    tied: a matrix kernel may sum two identical gallery rows in another order (1 ulp apart), and
    duplicates must tie whatever column they sit in. Two passes: the best relevant similarity,
    then the counts.

    Shape: queries [Nq, D], gallery [Ng, D], query_groups [Nq] int, gallery_groups [Ng] int
    -> (greater [Nq] int64, tied [Nq] int64). Raises ValueError when a query has no relevant
    item.
    """
    _check(queries, gallery)
    dev = resolve_device(device)
    gal = _Gallery(gallery, chunk=gallery_chunk, device=dev, cache_bytes=cache_bytes)
    ggroups = torch.from_numpy(np.asarray(gallery_groups, dtype=np.int64)).to(dev)
    nq = int(queries.shape[0])
    greater = np.zeros(nq, dtype=np.int64)
    tied = np.zeros(nq, dtype=np.int64)
    for qs in range(0, nq, max(1, query_chunk)):
        q = _unit(
            torch.from_numpy(np.asarray(queries[qs : qs + query_chunk], dtype=np.float32)).to(dev)
        )
        qg = torch.from_numpy(np.asarray(query_groups[qs : qs + query_chunk], dtype=np.int64))
        qg = qg.to(dev)
        best = torch.full((q.shape[0],), float("-inf"), device=dev)
        for gs, g in gal:
            sims = q @ g.T
            relevant = ggroups[None, gs : gs + g.shape[0]] == qg[:, None]
            best = torch.maximum(best, sims.masked_fill(~relevant, float("-inf")).amax(1))
        if bool(torch.isinf(best).any()):
            raise ValueError("every query needs at least one relevant gallery item")
        above = torch.zeros(q.shape[0], dtype=torch.long, device=dev)
        equal = torch.zeros_like(above)
        for gs, g in gal:
            sims = q @ g.T
            other = ggroups[None, gs : gs + g.shape[0]] != qg[:, None]
            above += ((sims > best[:, None] + TIE_TOLERANCE) & other).sum(1)
            equal += (((sims - best[:, None]).abs() <= TIE_TOLERANCE) & other).sum(1)
        greater[qs : qs + q.shape[0]] = above.cpu().numpy()
        tied[qs : qs + q.shape[0]] = equal.cpu().numpy()
    return greater, tied
