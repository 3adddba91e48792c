"""Similarity search throughput (extrapolate / retrieve / kNN) against its ceiling, side by side.

    python benchmarks/search.py [--pool 400000] [--queries 10000] [--dim 384] [--device cpu]

One JSON line per figure: {"figure", "value", "ceiling", "ratio", "unit", ...}.
- search_topk: queries/s of `eval.search.topk_cosine` (chunked, what extrapolate and kNN use)
  against a reference pool held as a numpy array, vs the ceiling: one normalised matmul +
  topk of the same queries against the same pool already on the device (no chunking, no
  copies; the fastest a search over this pool can be);
- search_rank_counts: queries/s of `eval.search.rank_counts` (retrieval's tie-aware ranks, two
  passes) vs the same ceiling;
- peak_rss_mb: the process's peak resident memory after the searches, beside the pool's size.
The paper's target (10,000 I->L->P queries against 400,000 reference lesions in < 5 s) is a GPU
figure: run with --device cuda there.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from slimp_cli.core.devices import resolve_device  # noqa: E402
from slimp_cli.eval.search import rank_counts, topk_cosine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=400_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((args.pool, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # ceiling: the pool already normalised on the device, one matmul + topk per query block
    g = torch.nn.functional.normalize(torch.from_numpy(pool).to(dev), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries).to(dev), dim=1)
    sync()
    t0 = time.perf_counter()
    for s in range(0, len(q), 4096):
        torch.topk(q[s : s + 4096] @ g.T, k=1, dim=1)
    sync()
    ceiling = len(q) / (time.perf_counter() - t0)
    del g, q

    t0 = time.perf_counter()
    topk_cosine(queries, pool, k=1, device=args.device)
    sync()
    topk_rate = len(queries) / (time.perf_counter() - t0)

    groups = np.arange(args.pool)
    t0 = time.perf_counter()
    rank_counts(
        queries,
        pool,
        query_groups=groups[: args.queries],
        gallery_groups=groups,
        device=args.device,
    )
    sync()
    rank_rate = len(queries) / (time.perf_counter() - t0)

    common = {
        "unit": "queries/s",
        "pool": args.pool,
        "queries": args.queries,
        "dim": args.dim,
        "device": str(dev),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    for name, value in (("search_topk", topk_rate), ("search_rank_counts", rank_rate)):
        print(
            json.dumps(
                {
                    "figure": name,
                    "value": round(value, 1),
                    "ceiling": round(ceiling, 1),
                    "ratio": round(value / ceiling, 3),
                    **common,
                }
            )
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                **common,
                "figure": "peak_rss_mb",
                "value": round(peak, 1),
                "pool_mb": round(pool.nbytes / 2**20, 1),
                "unit": "MB",
            }
        )
    )


if __name__ == "__main__":
    main()
