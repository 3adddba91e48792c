"""Embedding throughput and memory: `slimp embed` of N and 2N generated lesions on the CPU.

Generates two cohorts (about N/2 and N images), ingests them at 32 px, trains a
tiny nested model for one step (the weights do not matter for speed), then embeds each cohort in
a fresh process and reports images/s and that process's peak resident memory. Streaming means
the peak stays flat as the count doubles (`peak_ratio` close to 1). The larger run's rate is
set against two ceilings timed at the same batch size in this process (benchmarks/ceilings.py):
the bare image encoder's inference and the whole model's (image, lesion and patient features),
both on tensors already in place (`ceilings`, `ratios`). One JSON object on stdout:

    .venv/bin/python benchmarks/embed.py [--images 20000] [--batch-size 256] [--model vit_test]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slimp_cli.ingest import ingest  # noqa: E402
from slimp_cli.ingest.synth import generate_cohort  # noqa: E402
from slimp_cli.models.config import ModelConfig  # noqa: E402
from slimp_cli.train.pretrain import pretrain  # noqa: E402
from slimp_cli.train.train_config import TrainConfig  # noqa: E402

IMAGES_PER_PATIENT = 2.7  # mean images per generated patient

CHILD = """
import json, resource, sys, time
from slimp_cli.features.embed import embed
run, data, out, bs = sys.argv[1:5]
t0 = time.perf_counter()
embed(run, data, out, batch_size=int(bs), device="cpu")
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def embed_in_child(run: Path, data: Path, out: Path, batch_size: int) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(run), str(data), str(out), str(batch_size)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"embed failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def embed_ceilings(run: Path, shards: Path, batch_size: int, n: int) -> dict:
    """Images/s of the bare image encoder's and the whole model's inference at embed's batch."""
    import torch

    from benchmarks import ceilings
    from slimp_cli.models.runs import load_run

    dev = torch.device("cpu")
    model = load_run(run, device=dev).model
    bs = min(batch_size, n)
    steps = max(2, min(4, n // bs))
    batches = ceilings.sample_batches(shards, model, b=8, n=4, count=2)
    return {
        "bare_encoder": round(ceilings.bare_encoder(model, bs, dev, train=False, steps=steps), 1),
        "whole_model": round(
            ceilings.whole_model_inference(model, batches, dev, batch_size=bs, steps=steps), 1
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000, help="images of the larger cohort")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="vit_test", help="image model (vit_test: 32 px, patch 8)")
    ap.add_argument("--img-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="slimp-embed-bench-") as tmp:
        tmp = Path(tmp)
        sizes = {"half": args.images // 2, "full": args.images}
        shards = {}
        for name, n in sizes.items():
            cohort = generate_cohort(
                tmp / f"cohort-{name}",
                patients=max(1, round(n / IMAGES_PER_PATIENT)),
                seed=1,
                image_size=args.img_size,
            )
            shards[name] = tmp / f"shards-{name}"
            ingest("synth", cohort.out, shards[name], image_size=args.img_size, workers=0)
        run = pretrain(
            shards["half"],
            tmp / "run",
            model=ModelConfig(variant="nested", image_model=args.model, img_size=args.img_size),
            train=TrainConfig(
                patients_per_batch=8,
                lesions_per_patient=4,
                epochs=1,
                max_steps=1,
                device="cpu",
                workers=0,
            ),
        )
        rows = []
        for name in sizes:
            from slimp_cli.features.store import FeatureStore

            stats = embed_in_child(run, shards[name], tmp / f"{name}.h5", args.batch_size)
            with FeatureStore.open(tmp / f"{name}.h5") as st:
                n = st.n
            rows.append(
                {
                    "lesions": n,
                    "seconds": round(stats["seconds"], 2),
                    "images_per_s": round(n / stats["seconds"], 1),
                    "peak_rss_mb": round(stats["peak_rss_mb"], 1),
                }
            )
        ceiling = embed_ceilings(run, shards["full"], args.batch_size, rows[1]["lesions"])
    print(
        json.dumps(
            {
                "benchmark": "embed",
                "ceilings": ceiling,
                "ratios": {k: round(rows[1]["images_per_s"] / v, 3) for k, v in ceiling.items()},
                "model": args.model,
                "img_size": args.img_size,
                "batch_size": args.batch_size,
                "runs": rows,
                "count_ratio": round(rows[1]["lesions"] / rows[0]["lesions"], 2),
                "peak_ratio": round(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
