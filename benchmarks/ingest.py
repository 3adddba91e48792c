"""Ingest throughput: images/s with 1 worker and with all cores, side by side in one run.

Generates a cohort of about --images images (PNG, --source-size px) in a temporary folder,
ingests it twice (workers=1, workers=all cores) at --image-size, checks both outputs are
byte-identical, and prints one JSON object on stdout:

    .venv/bin/python benchmarks/ingest.py [--images 2000] [--source-size 160] [--image-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slimp_cli.ingest import ingest  # noqa: E402
from slimp_cli.ingest.synth import generate_cohort  # noqa: E402

IMAGES_PER_PATIENT = 2.7  # measured mean of the generator (geometric lesion count + second images)


def run(images: int, source_size: int, image_size: int) -> dict:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="slimp-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cohort = generate_cohort(
            tmp / "cohort",
            patients=max(1, round(images / IMAGES_PER_PATIENT)),
            seed=0,
            image_size=source_size,
        )
        synth_s = time.perf_counter() - t0
        results, digests = [], []
        for workers in (1, cores):
            out = tmp / f"shards-{workers}"
            t0 = time.perf_counter()
            result = ingest("synth", cohort.out, out, image_size=image_size, workers=workers)
            seconds = time.perf_counter() - t0
            n = result.manifest["counts"]["images"]
            digests.append([s["sha256"] for s in result.manifest["shards"]])
            results.append(
                {
                    "workers": workers,
                    "images": n,
                    "seconds": round(seconds, 3),
                    "images_per_s": round(n / seconds, 1),
                }
            )
    return {
        "benchmark": "ingest",
        "cohort": {
            "patients": cohort.patients,
            "images": cohort.images,
            "source_size": source_size,
            "generate_seconds": round(synth_s, 3),
            "generate_images_per_s": round(cohort.images / synth_s, 1),
        },
        "image_size": image_size,
        "runs": results,
        "speedup": round(results[1]["images_per_s"] / results[0]["images_per_s"], 2),
        "identical_output": digests[0] == digests[1],
        "cpu_count": cores,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=2000, help="approximate number of generated images"
    )
    parser.add_argument(
        "--source-size", type=int, default=160, help="side of the generated source images (px)"
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="--image-size of the ingest (px)"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.images, args.source_size, args.image_size), indent=2))


if __name__ == "__main__":
    main()
