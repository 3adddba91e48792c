"""Data path throughput per core against its ceiling, measured side by side in one run.

    python benchmarks/data_path.py --data SHARDS [--size 224] [--images 400] [--repeats 3]

One JSON line per figure: {"figure", "value", "ceiling", "ratio", "unit", ...}. Everything runs
on one core (torch and PIL single-threaded) over the same images, held in memory (the shards'
JPEG bytes: disk speed is not measured). The ceiling is what any loader must do: PIL decode +
resize to the model's size (the same bicubic filter as the eval path) into a uint8 array.

- data_path_eval: what a DataLoader worker does on the eval/embed path (decode at reduced
  scale when possible, resize + centre-crop, uint8 tensor);
- data_path_augment: the worker's part of SLIMP's augmentation (decode, random resized crop,
  flips, colour parameters), the colour maths themselves running batched on the device;
- data_path_augment_simclr: the same for the SimCLR recipe (adds a Gaussian blur on the crop);
- data_path_batch_ops_cpu: images/s of the batched part (normalise + colour jitter) when it
  has to run on this CPU (no GPU), per core, reported beside the worker figures.
Figures are the best of `--repeats` passes (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from slimp_cli.data.shards import ShardIndex  # noqa: E402
from slimp_cli.data.transforms import Preprocess, decode_image, to_model_input  # noqa: E402


def load_bytes(data: str, n: int) -> list[bytes]:
    index = ShardIndex.open(data)
    out: list[bytes] = []
    while len(out) < n:
        for p in range(len(index)):
            rec = index.patient(p)
            out += [rec.read_image(j) for j in range(len(rec.lesions))]
            if len(out) >= n:
                break
    return out[:n]


def best_rate(fn, items, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def ceiling(data: bytes, size: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an ingested shard folder")
    ap.add_argument("--size", type=int, default=224, help="model input side")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    items = load_bytes(args.data, args.images)
    stored = Image.open(io.BytesIO(items[0])).size
    pre = Preprocess(img_size=args.size)
    rng = np.random.default_rng(0)

    ceil = best_rate(lambda b: ceiling(b, args.size), items, args.repeats)
    eval_rate = best_rate(lambda b: pre.load_uint8(b), items, args.repeats)

    def augment(recipe):
        def run(b):
            img = decode_image(b, size=args.size)
            pre.augment_view(img, rng, recipe)

        return run

    aug = best_rate(augment("light"), items, args.repeats)
    aug_simclr = best_rate(augment("simclr"), items, args.repeats)

    batch = torch.stack([pre.augment_view(decode_image(b), rng)[0] for b in items[:64]])
    jitter = torch.stack([pre.augment_view(decode_image(b), rng)[1] for b in items[:64]])
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 1.0:
        to_model_input(batch, pre, jitter)
        reps += 1
    batch_rate = reps * len(batch) / (time.perf_counter() - t0)

    common = {
        "unit": "images/s/core",
        "stored_size": list(stored),
        "model_size": args.size,
        "images": len(items),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    for name, value in (
        ("data_path_eval", eval_rate),
        ("data_path_augment", aug),
        ("data_path_augment_simclr", aug_simclr),
    ):
        print(
            json.dumps(
                {
                    "figure": name,
                    "value": round(value, 1),
                    "ceiling": round(ceil, 1),
                    "ratio": round(value / ceil, 3),
                    **common,
                }
            )
        )
    print(
        json.dumps(
            {
                "figure": "data_path_batch_ops_cpu",
                "value": round(batch_rate, 1),
                "ceiling": round(ceil, 1),
                "ratio": round(batch_rate / ceil, 3),
                **common,
            }
        )
    )


if __name__ == "__main__":
    main()
