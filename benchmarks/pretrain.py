"""Pre-training and embedding throughput end to end against two ceilings each, side by side.

    python benchmarks/pretrain.py [--patients 200] [--model vit_test] [--img-size 32]
                                  [-B 16] [-N 4] [--steps 20] [--device cpu] [--workers 0]
                                  [--decode cpu] [--embed-batch 64] [--optimizers]

One JSON line per figure: {"figure", "value", "ceilings": {...}, "ratios": {...}, ...}.
- pretrain_images_per_s: `slimp_cli.train.pretrain` on ingested shards of a generated cohort
  (nested SLIMP, B patients x up to N lesions), the mean per-step images/s after the first
  step (`metrics.jsonl`), against (benchmarks/ceilings.py) `bare_encoder`: the image encoder's
  forward + backward + optimiser step on random uint8 images of the same batch, and
  `whole_model`: the whole model's step (image and metadata encoders, loss, clipping,
  optimiser) on batches of the same shapes already on the device; `optimizer_share` is the
  optimiser's part of that step;
- embed_images_per_s: `slimp_cli.features.embed.embed` of the same shards (whole, fixed costs
  included) against the bare image encoder's and the whole model's inference at embed's batch
  size (`--embed-batch`, or the image count when smaller);
- with `--optimizers`: seconds per AdamW step of each implementation on the model's
  parameters (`train/optim.py`'s rule comes from these).
Measured figures: README "Performance". GPU: benchmarks/gpu.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import ceilings  # noqa: E402
from slimp_cli.core.devices import resolve_device  # noqa: E402
from slimp_cli.features.embed import embed  # noqa: E402
from slimp_cli.ingest import ingest  # noqa: E402
from slimp_cli.ingest.synth import generate_cohort  # noqa: E402
from slimp_cli.models import build_model  # noqa: E402
from slimp_cli.models.config import ModelConfig  # noqa: E402
from slimp_cli.models.runs import read_metrics  # noqa: E402
from slimp_cli.train import TrainConfig, pretrain  # noqa: E402
from slimp_cli.train.optim import optimizer_impl, time_optimizers  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--model", default="vit_test")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("-B", type=int, default=16)
    ap.add_argument("-N", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--decode", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--embed-batch", type=int, default=64)
    ap.add_argument("--optimizers", action="store_true", help="time the AdamW implementations")
    return ap.parse_args(argv)


def measure(args, tmp: Path) -> list[dict]:
    """The figures of one configuration (JSON-ready dicts)."""
    dev = resolve_device(args.device)
    generate_cohort(tmp / "cohort", patients=args.patients, seed=0, image_size=64)
    ingest("synth", tmp / "cohort", tmp / "shards", image_size=args.img_size, workers=2)
    model_cfg = ModelConfig(image_model=args.model, img_size=args.img_size)
    train = TrainConfig(
        patients_per_batch=args.B,
        lesions_per_patient=args.N,
        epochs=100,
        max_steps=args.steps,
        device=args.device,
        workers=args.workers,
        log_every=1,
        decode=args.decode,
    )
    run = pretrain(tmp / "shards", tmp / "run", model=model_cfg, train=train)
    e2e = ceilings.mean([r["images_per_s"] for r in read_metrics(run)[1:]])  # 1st: start-up
    schema = _schema(tmp / "shards")
    model = build_model(model_cfg, schema)
    batches = ceilings.sample_batches(
        tmp / "shards", model, b=args.B, n=args.N, count=min(args.steps, 8) + 1
    )
    whole = ceilings.whole_model_step(model, batches, dev, train_cfg=train)
    batch_images = round(whole["batch_images"])
    bare = ceilings.bare_encoder(
        build_model(model_cfg, schema), batch_images, dev, train=True, steps=min(args.steps, 8)
    )
    t0 = time.perf_counter()
    n = _n_images(tmp / "shards")
    embed(
        run,
        tmp / "shards",
        tmp / "s.h5",
        batch_size=args.embed_batch,
        device=args.device,
        workers=args.workers,
        decode=args.decode,
    )
    embed_rate = n / (time.perf_counter() - t0)
    bs = min(args.embed_batch, n)
    infer_steps = max(2, min(4, n // bs))
    infer_bare = ceilings.bare_encoder(model, bs, dev, train=False, steps=infer_steps)
    infer_whole = ceilings.whole_model_inference(
        model, batches, dev, batch_size=bs, steps=infer_steps
    )
    common = {
        "model": args.model,
        "img_size": args.img_size,
        "B": args.B,
        "N": args.N,
        "decode": args.decode,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    rows = [
        {
            "figure": "pretrain_images_per_s",
            "value": round(e2e, 2),
            "ceilings": {
                "bare_encoder": round(bare, 2),
                "whole_model": round(whole["images_per_s"], 2),
            },
            "ratios": {
                "bare_encoder": round(e2e / bare, 3),
                "whole_model": round(e2e / whole["images_per_s"], 3),
            },
            "optimizer": optimizer_impl(dev),
            "optimizer_s": round(whole["optimizer_s"], 3),
            "step_s": round(whole["step_s"], 3),
            "optimizer_share": round(whole["optimizer_share"], 3),
            "batch_images": round(whole["batch_images"], 1),
            "steps": args.steps,
            "unit": "images/s",
            **common,
        },
        {
            "figure": "embed_images_per_s",
            "value": round(embed_rate, 2),
            "ceilings": {
                "bare_encoder": round(infer_bare, 2),
                "whole_model": round(infer_whole, 2),
            },
            "ratios": {
                "bare_encoder": round(embed_rate / infer_bare, 3),
                "whole_model": round(embed_rate / infer_whole, 3),
            },
            "batch_size": bs,
            "images": n,
            "unit": "images/s",
            **common,
        },
    ]
    if args.optimizers:
        params = [p for p in model.parameters() if p.requires_grad]
        times = time_optimizers(params, steps=3)
        rows.append(
            {
                "figure": "adamw_step_s",
                "value": {k: round(v, 3) for k, v in times.items()},
                "parameters": sum(p.numel() for p in params),
                "chosen": optimizer_impl(dev),
                "unit": "s/step",
                **common,
            }
        )
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for row in measure(args, Path(tmp)):
            print(json.dumps(row), flush=True)


def _schema(shards: Path):
    from slimp_cli.data.shards import ShardIndex

    return ShardIndex.open(shards).schema


def _n_images(shards: Path) -> int:
    from slimp_cli.data.shards import ShardIndex

    index = ShardIndex.open(shards)
    return sum(len(index.patient(i).lesions) for i in range(len(index)))


if __name__ == "__main__":
    main()
